import type { Logger } from 'pino'
import { type RepositoryFilter, repositoryFilter } from './filter.js'
import { digestKey, keyToString, type RoutingKey, tagKey } from './routing/keys.js'
import type { Router } from './routing/router.js'
import type { Digest } from './oci/index.js'
import type { Image, Store } from './store/store.js'

export interface StateSyncComponents {
  store: Store
  router: Router
  logger: Logger
}

export interface StateSyncInit {
  /** Full re-walk of every image: catches content containerd garbage-collected without an event. */
  resyncIntervalMs: number
  include?: readonly string[]
  exclude?: readonly string[]
}

/**
 * Keeps the Router in sync with the Store: everything at start, each image event as it comes, and a periodic
 * full resync. An image contributes its tag key and every digest reachable from it that the node holds; a
 * key is withdrawn when no image contributes it any more.
 */
export class StateSync {
  private readonly log: Logger
  private readonly filter: RepositoryFilter
  /** Image name → the keys it contributes (tag first, then root, manifests, config, layers). */
  private readonly byImage = new Map<string, RoutingKey[]>()
  /** The union of byImage as last sent to the router. */
  private advertised = new Map<string, RoutingKey>()
  /** Digests whose local copy failed verification: never advertised (nor served) again by this process. */
  private readonly quarantined = new Set<string>()
  private readonly controller = new AbortController()
  private loop: Promise<void> | undefined
  private timer: NodeJS.Timeout | undefined
  private resyncing: Promise<void> | undefined
  /** Resolves after the first snapshot was advertised (tests and readiness use it). */
  readonly synced: Promise<void>
  private markSynced!: () => void
  private syncedOnce = false

  constructor(
    private readonly components: StateSyncComponents,
    private readonly init: StateSyncInit,
  ) {
    this.log = components.logger.child({ component: 'state' })
    this.filter = repositoryFilter(init)
    this.synced = new Promise((resolve) => (this.markSynced = resolve))
    void this.synced.then(() => (this.syncedOnce = true))
  }

  async start(): Promise<void> {
    this.loop = this.follow()
    this.timer = setInterval(() => void this.resync(), this.init.resyncIntervalMs)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    this.controller.abort()
    clearInterval(this.timer)
    await this.loop
    await this.resyncing?.catch(() => undefined)
  }

  /** Keys currently advertised because of some image. */
  keys(): Set<string> {
    return new Set(this.advertised.keys())
  }

  /** Each image name known at the last sync and how many keys it advertises (0: filtered out). */
  images(): { name: string; keys: number }[] {
    return [...this.byImage].map(([name, keys]) => ({ name, keys: keys.length }))
  }

  /** True once the first containerd snapshot was handed to the router. */
  isSynced(): boolean {
    return this.syncedOnce
  }

  /** Whether `key` is advertised now: the servers answer only with such content. */
  advertises(key: RoutingKey): boolean {
    return this.advertised.has(keyToString(key))
  }

  /** Our copy of `digest` is corrupt: stop advertising it now and leave it out from then on. */
  async quarantine(digest: Digest): Promise<void> {
    this.quarantined.add(digest)
    const key = digestKey(digest)
    for (const keys of this.byImage.values()) {
      const i = keys.findIndex((k) => k.kind === 'digest' && k.digest === digest)
      if (i >= 0) keys.splice(i, 1)
    }
    if (this.advertised.delete(keyToString(key)))
      await this.components.router.withdraw([key], { signal: this.controller.signal })
  }

  private async keysOf(image: Image): Promise<RoutingKey[]> {
    const { reference } = image
    if (!this.filter.allows(reference.registry, reference.repository)) return []
    const digests = (await this.components.store.reachable(image, { signal: this.controller.signal })).filter(
      (d) => !this.quarantined.has(d),
    )
    // an image pulled by digest has no tag to advertise, only its content
    return [...(reference.tag !== undefined ? [tagKey(reference)] : []), ...digests.map(digestKey)]
  }

  private async follow(): Promise<void> {
    const signal = this.controller.signal
    try {
      for await (const event of this.components.store.watch({ signal })) {
        try {
          if (event.type === 'snapshot') await this.apply(event.images)
          else if (event.type === 'delete') await this.remove(event.name)
          else await this.update(event.image)
        } catch (err) {
          if (signal.aborted) return
          this.log.warn(
            { err: (err as Error).message, event: event.type },
            'could not apply a store event; the next resync will',
          )
        }
      }
    } catch (err) {
      if (!signal.aborted) this.log.error({ err }, 'store watch ended')
    }
  }

  private async update(image: Image): Promise<void> {
    const keys = await this.keysOf(image)
    this.byImage.set(image.name, keys)
    await this.withdrawUnused()
    await this.components.router.advertise(keys, { signal: this.controller.signal })
    this.log.debug({ ref: image.name, keys: keys.length }, 'image advertised')
  }

  private async remove(name: string): Promise<void> {
    this.byImage.delete(name)
    await this.withdrawUnused()
  }

  /** Withdraws keys no image contributes any more (a layer shared by two images stays until both go). */
  private async withdrawUnused(): Promise<void> {
    const now = new Map<string, RoutingKey>()
    for (const keys of this.byImage.values()) for (const k of keys) now.set(keyToString(k), k)
    const gone = [...this.advertised].filter(([s]) => !now.has(s)).map(([, k]) => k)
    this.advertised = now
    if (gone.length > 0) await this.components.router.withdraw(gone, { signal: this.controller.signal })
  }

  /** Replaces the whole state with `images` (a snapshot or a resync), advertising tags and manifests first. */
  private async apply(images: Image[]): Promise<void> {
    const next = new Map<string, RoutingKey[]>()
    for (const image of images) {
      try {
        next.set(image.name, await this.keysOf(image))
      } catch (err) {
        if (this.controller.signal.aborted) return
        this.log.warn({ err: (err as Error).message, ref: image.name }, 'could not walk image')
      }
    }
    this.byImage.clear()
    for (const [name, keys] of next) this.byImage.set(name, keys)
    await this.withdrawUnused()
    // Tags and roots first: a node that lists the tag can serve the manifest, and blobs follow.
    const all = [...this.byImage.values()]
    const ordered = [...all.map((k) => k.slice(0, 2)).flat(), ...all.map((k) => k.slice(2)).flat()]
    this.markSynced()
    await this.components.router.advertise(ordered, { signal: this.controller.signal })
    this.log.info({ images: this.byImage.size, keys: this.keys().size }, 'state synced')
  }

  /** Periodic full resync from the store (catches GC'd content). One at a time. */
  async resync(): Promise<void> {
    if (this.resyncing !== undefined || this.controller.signal.aborted) return
    this.resyncing = (async () => {
      try {
        await this.apply(await this.components.store.images({ signal: this.controller.signal }))
      } catch (err) {
        if (!this.controller.signal.aborted)
          this.log.warn({ err: (err as Error).message }, 'resync failed; will retry')
      } finally {
        this.resyncing = undefined
      }
    })()
    await this.resyncing
  }
}

export function stateSync(components: StateSyncComponents, init: StateSyncInit): StateSync {
  return new StateSync(components, init)
}
