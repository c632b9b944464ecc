import type { Logger } from 'pino'
import { Counter, Gauge, type Registry } from 'prom-client'
import type { Digest } from '../oci/index.js'
import { digestKey, type RoutingKey } from '../routing/keys.js'
import type { Router } from '../routing/router.js'
import type { Ingest, Store } from '../store/store.js'

export interface InFlightComponents {
  store: Store
  router: Pick<Router, 'advertise' | 'withdraw'>
  /** Ordinary advertised content (state sync): a mark never withdraws what that still advertises. */
  advertised: (key: RoutingKey) => boolean
  logger: Logger
  /** Registers the in-flight gauge and serve counter when given. */
  metrics?: Registry
}

export interface InFlightInit {
  /** How often containerd's downloads are listed while any are expected (default 150 ms). */
  pollIntervalMs?: number
  /** How long a requested digest waits for its download to appear (default 60 s). */
  expectTtlMs?: number
  /**
   * How long a committed download stays advertised by this mark while its image is not yet (containerd
   * creates the image only once the whole pull is done; state sync then advertises it), default 10 min.
   */
  committedTtlMs?: number
  /** Bound on digests expected at once (default 4096): the oldest is forgotten first. */
  maxExpected?: number
  /**
   * A download that has not grown for this long is not served (default 2 s). When its source dies, every
   * node that was following it stalls at once; serving each other those stalled copies would go round in
   * circles, while a refusal sends them on (to a new elected node, or upstream).
   */
  stallMs?: number
}

type Mark = { state: 'inflight'; ingest: Ingest; grewAtMs: number } | { state: 'committed'; untilMs: number }

/**
 * Blobs this node is downloading, advertised while they arrive so that peers can fetch them from the growing
 * file instead of from upstream (design §2: the ingest's `data` file grows in place).
 *
 * Only digests asked for through this node's mirror are marked: the mirror's repository filter has passed
 * them, and downloads kagami never saw (other registries, `ctr content ingest`) are never advertised. A
 * digest is expected when the mirror could not serve it locally; containerd's ingest of it shows in
 * `Content/ListStatuses` within one poll (~150 ms), and the mark is withdrawn when the ingest ends:
 * committed → kept until state sync advertises the image (or a TTL), aborted → withdrawn.
 */
export class InFlight {
  private readonly log: Logger
  /** digest → when it stops being expected */
  private readonly expected = new Map<Digest, number>()
  private readonly marks = new Map<Digest, Mark>()
  private timer: NodeJS.Timeout | undefined
  private polling: Promise<void> | undefined
  private stopped = false
  private readonly serves: Counter | undefined

  constructor(
    private readonly components: InFlightComponents,
    private readonly init: InFlightInit = {},
  ) {
    this.log = components.logger.child({ component: 'inflight' })
    const registers = components.metrics !== undefined ? [components.metrics] : undefined
    if (registers !== undefined) {
      this.serves = new Counter({
        name: 'kagami_inflight_serves_total',
        help: 'Blobs this node served to peers while they were still arriving (from the growing download)',
        registers,
      })
      const count = (): number => this.inflightCount()
      new Gauge({
        name: 'kagami_inflight_downloads',
        help: 'Blobs this node advertises as in flight now (downloading, seen in containerd ingests)',
        registers,
        collect() {
          this.set(count())
        },
      })
    }
  }

  /** A peer was served a blob of ours that is still arriving. */
  served(): void {
    this.serves?.inc()
  }

  /** The mirror could not serve `digest` locally: a download of it will likely start here now. */
  expect(digest: Digest): void {
    if (this.stopped) return
    this.expected.delete(digest)
    if (this.expected.size >= (this.init.maxExpected ?? 4096)) {
      const oldest = this.expected.keys().next().value
      if (oldest !== undefined) this.expected.delete(oldest)
    }
    this.expected.set(digest, Date.now() + (this.init.expectTtlMs ?? 60_000))
    this.schedule(0)
  }

  /** Whether this marks `key` as held: in flight, or committed and not yet advertised by its image. */
  advertises(key: RoutingKey): boolean {
    return key.kind === 'digest' && this.marks.has(key.digest)
  }

  /** The download of `digest` while it is in flight and growing. */
  ingest(digest: Digest): Ingest | undefined {
    const mark = this.marks.get(digest)
    if (mark?.state !== 'inflight') return undefined
    return Date.now() - mark.grewAtMs <= (this.init.stallMs ?? 2000) ? mark.ingest : undefined
  }

  /** Digests in flight now (status, metrics). */
  inflightCount(): number {
    let n = 0
    for (const m of this.marks.values()) if (m.state === 'inflight') n++
    return n
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    await this.polling
  }

  private schedule(delayMs: number): void {
    if (this.stopped || this.polling !== undefined) return
    if (this.timer !== undefined && delayMs > 0) return
    clearTimeout(this.timer)
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.polling = this.poll().finally(() => {
        this.polling = undefined
        if (this.expected.size > 0 || this.marks.size > 0) this.schedule(this.init.pollIntervalMs ?? 150)
      })
    }, delayMs)
    this.timer.unref()
  }

  private async poll(): Promise<void> {
    let ingests: Ingest[]
    try {
      ingests = await this.components.store.ingests({ signal: AbortSignal.timeout(1000) })
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'cannot list downloads')
      return
    }
    const now = Date.now()
    const active = new Map<Digest, Ingest>()
    for (const i of ingests) if (i.totalBytes > 0) active.set(i.expected, i)

    const fresh: RoutingKey[] = []
    for (const [digest, until] of this.expected) {
      const ingest = active.get(digest)
      if (ingest !== undefined) {
        const mark = this.marks.get(digest)
        if (mark?.state !== 'inflight') {
          if (mark === undefined && !this.components.advertised(digestKey(digest)))
            fresh.push(digestKey(digest))
          this.marks.set(digest, { state: 'inflight', ingest, grewAtMs: now })
          this.log.debug({ digest, ref: ingest.ref, bytes: ingest.totalBytes }, 'download in flight')
        } else {
          if (ingest.offsetBytes !== mark.ingest.offsetBytes) mark.grewAtMs = now
          mark.ingest = ingest
        }
      } else if (until < now && this.marks.get(digest)?.state !== 'inflight') {
        this.expected.delete(digest)
      }
    }
    if (fresh.length > 0) await this.components.router.advertise(fresh).catch(() => undefined)

    const gone: RoutingKey[] = []
    for (const [digest, mark] of this.marks) {
      const key = digestKey(digest)
      if (mark.state === 'inflight') {
        if (active.has(digest)) continue
        // the download ended: committed content stays (ordinary content soon), an aborted one goes
        this.expected.delete(digest)
        const committed = await this.components.store
          .stat(digest, { signal: AbortSignal.timeout(1000) })
          .then(
            () => true,
            () => false,
          )
        if (committed) {
          this.marks.set(digest, { state: 'committed', untilMs: now + (this.init.committedTtlMs ?? 600_000) })
          continue
        }
      } else if (!this.components.advertised(key) && mark.untilMs > now) {
        continue
      }
      this.marks.delete(digest)
      if (!this.components.advertised(key)) gone.push(key)
    }
    if (gone.length > 0) await this.components.router.withdraw(gone).catch(() => undefined)
  }
}
