import { isDigest, parseReference } from '../oci/index.js'
import type { Activity } from '../registry/activity.js'
import type { KnownPeer } from '../routing/kad-dht.js'
import { digestKey, keyToString, type RoutingKey, tagKey } from '../routing/keys.js'
import type { Peer, Router } from '../routing/router.js'
import type { DaemonStatus, HoldersResult, ImageStatus, PeerStatus } from '../status.js'
import type { AbortOptions } from '../abort.js'
import type { Image, Store } from '../store/store.js'

/** The router as the status page reads it: the Router seam plus the DHT router's own bookkeeping. */
export interface StatusRouter extends Router {
  readonly peerId: string | undefined
  advertisedCount(): number
  pendingProvides(): number
  knownPeers(): KnownPeer[]
  knownKeys(): Iterable<string>
}

/** State sync as the status page reads it. */
export interface StatusStateSync {
  images(): { name: string; keys: number }[]
  keys(): Set<string>
  isSynced(): boolean
}

export interface StatusComponents {
  router: StatusRouter
  store: Store
  state: StatusStateSync
  activity: Activity
  /** containerd's event stream is up (ContainerdStore.connected()). */
  containerdConnected: () => boolean
}

export interface StatusInit {
  peerUrl: string
  /** `private` with a PSK, else `open`. */
  network: 'private' | 'open'
  version: string
  startedAt: number
  containerdAddress: string
  containerdNamespace: string
  /** Bootstrap entries; with none configured a lone node is expected, not isolated. */
  bootstrap: readonly string[]
}

const MAX_MATCHES = 20
const MAX_HOLDERS = 50

/**
 * Builds `/status` from the components' own state (router, store, state sync, the registry's activity):
 * nothing is read back from Prometheus text, so the page shows what the components know, not what was
 * last exported.
 */
export class StatusCollector {
  constructor(
    private readonly components: StatusComponents,
    private readonly init: StatusInit,
  ) {}

  /** Why the node is not ready; empty when it is. */
  notReady(): string[] {
    const { router, state, containerdConnected } = this.components
    const why: string[] = []
    if (!containerdConnected())
      why.push(`containerd is not connected (${this.init.containerdAddress}); reconnecting`)
    if (!router.isReady()) why.push('the DHT has not finished its first bootstrap round')
    if (!state.isSynced()) why.push("containerd's images are not advertised yet (first sync running)")
    return why
  }

  async status(options: AbortOptions = {}): Promise<DaemonStatus> {
    const { router, store, state, activity, containerdConnected } = this.components
    const now = Date.now()
    let images: Image[] | undefined
    try {
      images = await store.images({ signal: options.signal })
    } catch {
      images = undefined // containerd down: the page still shows what state sync last saw
    }
    const peers: PeerStatus[] = router.knownPeers().map((p) => {
      const t = activity.peerTraffic(p.id)
      return {
        ...p,
        bytesFrom: t?.bytesFrom ?? 0,
        requestsFrom: t?.requestsFrom ?? 0,
        lastFetchAt: t?.lastFetchAt ?? 0,
      }
    })
    const connectedPeers = peers.filter((p) => p.connected).length
    const gonePeers = peers.filter((p) => !p.connected).slice(0, 50)
    const notReady = this.notReady()
    const warnings: string[] = []
    if (this.init.network === 'open')
      warnings.push('open network: no pre-shared key, any host that reaches the p2p port can join')
    if (connectedPeers === 0 && this.init.bootstrap.length > 0)
      warnings.push('isolated: no peers connected, every request the node does not hold is a miss')
    const t = activity.totals
    return {
      peerId: router.peerId ?? '',
      peerUrl: this.init.peerUrl,
      network: this.init.network,
      version: this.init.version,
      startedAt: this.init.startedAt,
      uptimeSeconds: (now - this.init.startedAt) / 1000,
      ready: notReady.length === 0,
      notReady,
      warnings,
      containerd: {
        connected: containerdConnected(),
        address: this.init.containerdAddress,
        namespace: this.init.containerdNamespace,
      },
      peers: peers.filter((p) => p.connected),
      gonePeers,
      images: images?.length ?? state.images().length,
      imageList: imageList(images, state),
      imagesFromContainerd: images !== undefined,
      advertisedKeys: router.advertisedCount(),
      pendingProvides: router.pendingProvides(),
      requests: { local: t.local, peer: t.peer, miss: t.miss },
      bytesServed: { local: t.bytesLocal, peer: t.bytesPeer },
      servedToPeers: { ...activity.servedToPeers },
      recent: activity.recent(50),
      inflight: activity.inflight().slice(0, 50),
      history: activity.buckets(),
    }
  }

  /**
   * Who holds a digest or an image: this node (state sync's keys), and peers (the router's lookup, which
   * answers from the key exchange in a meshed cluster). Also lists tags known in the cluster whose name
   * contains the query, so `app` finds `registry.local/team/app:v1`.
   */
  async holders(query: string, options: AbortOptions = {}): Promise<HoldersResult> {
    const q = query.trim().slice(0, 1024)
    const result: HoldersResult = { query: q, self: false, holders: [], matches: [] }
    if (q === '') return result
    const local = this.components.state.keys()
    let key: RoutingKey | undefined
    const bare = /^[a-f0-9]{64}$/.test(q) ? `sha256:${q}` : q
    if (isDigest(bare)) key = digestKey(bare)
    else {
      try {
        const ref = parseReference(q)
        key = ref.digest !== undefined ? digestKey(ref.digest) : tagKey(ref)
      } catch (err) {
        if (/[:@]/.test(q)) result.error = (err as Error).message
      }
    }
    const lookups: Promise<void>[] = []
    if (key !== undefined) {
      const k = key
      result.key = keyToString(k)
      result.self = local.has(result.key)
      lookups.push(
        this.lookup(k, options).then((h) => {
          result.holders = h
        }),
      )
      if (k.kind === 'tag' && result.self) {
        lookups.push(
          this.components.store
            .resolve(
              { registry: k.registry, repository: k.repository, tag: k.tag },
              { signal: options.signal },
            )
            .then(
              (d) => {
                result.digest = d.digest
              },
              () => undefined,
            ),
        )
      }
    }
    const needle = q.toLowerCase()
    const known = new Set<string>()
    for (const s of [...local, ...this.components.router.knownKeys()]) {
      if (known.size >= MAX_MATCHES) break
      if (s.startsWith('sha256:') || s === result.key || !s.toLowerCase().includes(needle)) continue
      known.add(s)
    }
    for (const s of known) {
      let ref: ReturnType<typeof parseReference>
      try {
        ref = parseReference(s) // keys come from peers: skip anything that is not a reference
      } catch {
        continue
      }
      if (ref.tag === undefined) continue
      const m = { key: s, self: local.has(s), holders: [] as { id: string; url: string }[] }
      result.matches.push(m)
      lookups.push(
        this.lookup(tagKey(ref), options).then((h) => {
          m.holders = h
        }),
      )
    }
    await Promise.all(lookups)
    // A tag's image is also held by nodes that have its root under another name (or by digest only).
    if (key?.kind === 'tag' && result.digest !== undefined && isDigest(result.digest)) {
      const seen = new Set(result.holders.map((h) => h.id))
      for (const p of await this.lookup(digestKey(result.digest), options))
        if (!seen.has(p.id)) result.holders.push(p)
    }
    result.matches.sort((a, b) => a.key.localeCompare(b.key))
    return result
  }

  private async lookup(key: RoutingKey, options: AbortOptions): Promise<Peer[]> {
    const out: Peer[] = []
    try {
      for await (const p of this.components.router.resolve(key, {
        signal: options.signal,
        limit: MAX_HOLDERS,
      }))
        out.push({ id: p.id, url: p.url })
    } catch {
      // a lookup cut by the deadline returns the holders found so far
    }
    return out
  }
}

/**
 * Images grouped by root digest, each with every name it is held under. Without containerd's list (it is
 * down), the names state sync last advertised, digests unknown.
 */
function imageList(images: Image[] | undefined, state: StatusStateSync): ImageStatus[] {
  if (images === undefined) {
    return state
      .images()
      .map((i) => ({ digest: '', names: [i.name], keys: i.keys, advertised: i.keys > 0 }))
      .sort((a, b) => (a.names[0] ?? '').localeCompare(b.names[0] ?? ''))
  }
  const keysByName = new Map(state.images().map((i) => [i.name, i.keys]))
  const byDigest = new Map<string, ImageStatus>()
  for (const image of images ?? []) {
    const digest = image.target.digest
    const entry = byDigest.get(digest) ?? { digest, names: [], keys: 0, advertised: false }
    entry.names.push(image.name)
    const keys = keysByName.get(image.name) ?? 0
    entry.keys = Math.max(entry.keys, keys)
    entry.advertised ||= keys > 0
    byDigest.set(digest, entry)
  }
  return [...byDigest.values()]
    .map((e) => ({ ...e, names: e.names.sort() }))
    .sort((a, b) => (a.names[0] ?? '').localeCompare(b.names[0] ?? ''))
}
