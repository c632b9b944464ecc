import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { Activity } from './activity.js'

export type Source = 'local' | 'peer' | 'miss'
export type ServerName = 'mirror' | 'peer'
export type RequestKind = 'manifest' | 'blob' | 'base' | 'other'

/**
 * Reasons a peer attempt fails: the `name` of the typed errors peers.ts sees (registry/errors.ts, plus an
 * abort). Listed so every series exists at 0 from the first scrape; an unknown name still counts.
 */
export const PEER_FAILURE_REASONS = [
  'PeerUnavailableError',
  'DeadlineExceededError',
  'DigestMismatchError',
  'ManifestNotAcceptableError',
  'RangeNotSatisfiableError',
  'AbortError',
] as const

/** Latency buckets from a loopback manifest hit (~1 ms) to a slow multi-GB blob (minutes). */
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]
const TTFB_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]

/**
 * At most this many distinct `registry` label values; later ones count as `other`. The peer endpoint is on
 * the network and `?ns=` is the client's to choose, so the label must not grow with hostile input.
 */
const MAX_REGISTRIES = 32

/** One finished registry request, as the server's onResponse hook sees it. */
export interface RequestOutcome {
  server: ServerName
  kind: RequestKind
  source: Source | undefined
  status: number
  /** The registry the request named (`?ns=` or the mirror's path), undefined for `/v2/` and bad paths. */
  registry: string | undefined
  method: string
  /** Digest or tag asked for. */
  ref: string | undefined
  /** Repository, when the path parsed. */
  repository?: string
  peer: string | undefined
  /** Body bytes sent (Content-Length of a GET that completed), 0 otherwise. */
  bytes: number
  durationSeconds: number
  /** Time until the first byte (headers) went out; undefined when nothing was written. */
  ttfbSeconds: number | undefined
  /** The client's address (the peer endpoint uses it to attribute bytes to a peer). */
  remoteAddress: string | undefined
}

/**
 * The registry's metrics, registered on the Registry passed in (never the global one), and the in-memory
 * activity (recent requests, per-peer bytes, history) that the status page shows. Both are fed by one call,
 * `observe`, so the page and the scrape can never disagree about what was counted.
 */
export class RegistryMetrics {
  readonly requests: Counter<'server' | 'kind' | 'source' | 'status' | 'registry'>
  readonly bytes: Counter<'server' | 'source' | 'registry'>
  readonly duration: Histogram<'server' | 'kind' | 'source'>
  readonly ttfb: Histogram<'server' | 'kind' | 'source'>
  readonly resolveSeconds: Histogram<'result'>
  readonly inflight: Gauge<'server'>
  readonly peerFailures: Counter<'reason'>
  readonly lastPeerServe: Gauge<'server'>
  /** Striping (stripe.ts): stripes fetched, and re-fetched from another peer after a failure or take-over. */
  readonly stripes: Counter<'result'>
  readonly stripedBlobs: Counter<'result'>
  readonly activity: Activity
  private readonly registries = new Set<string>()

  constructor(registry: Registry, activity: Activity = new Activity()) {
    const registers = [registry]
    this.activity = activity
    this.requests = new Counter({
      name: 'kagami_requests_total',
      help: 'Registry requests (probes and scrapes excluded) by server (mirror|peer), kind (manifest|blob|base|other), source (local|peer|miss|none), status and registry',
      labelNames: ['server', 'kind', 'source', 'status', 'registry'],
      registers,
    })
    this.bytes = new Counter({
      name: 'kagami_bytes_served_total',
      help: 'Body bytes served by server, source and registry',
      labelNames: ['server', 'source', 'registry'],
      registers,
    })
    this.duration = new Histogram({
      name: 'kagami_request_duration_seconds',
      help: 'Registry request duration, until the last body byte, by server, kind and source',
      labelNames: ['server', 'kind', 'source'],
      buckets: DURATION_BUCKETS,
      registers,
    })
    this.ttfb = new Histogram({
      name: 'kagami_request_ttfb_seconds',
      help: 'Time to first byte (response headers written) of registry requests, by server, kind and source',
      labelNames: ['server', 'kind', 'source'],
      buckets: TTFB_BUCKETS,
      registers,
    })
    this.resolveSeconds = new Histogram({
      name: 'kagami_resolve_duration_seconds',
      help: 'Time to find the first peer for a request the node does not hold (result: hit|miss)',
      labelNames: ['result'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    })
    this.inflight = new Gauge({
      name: 'kagami_inflight_requests',
      help: 'Registry requests being served',
      labelNames: ['server'],
      registers,
    })
    this.peerFailures = new Counter({
      name: 'kagami_peer_failures_total',
      help: 'Failed peer attempts by reason (timeout, error status, reset, digest mismatch)',
      labelNames: ['reason'],
      registers,
    })
    this.lastPeerServe = new Gauge({
      name: 'kagami_last_peer_serve_timestamp_seconds',
      help: 'Unix time of the last successful transfer between peers: server="mirror" when this node got content from a peer, server="peer" when it served content to one (0: never)',
      labelNames: ['server'],
      registers,
    })
    this.stripes = new Counter({
      name: 'kagami_stripes_total',
      help: 'Stripes of striped blobs by result: fetched (first try) or refetched (from another peer after a failed, frozen, trickling or much slower one)',
      labelNames: ['result'],
      registers,
    })
    this.stripedBlobs = new Counter({
      name: 'kagami_striped_blobs_total',
      help: 'Blobs fetched striped over several peers: started, and failed (digest mismatch: then fetched from one peer at a time)',
      labelNames: ['result'],
      registers,
    })
    this.zeroInit()
  }

  /**
   * Every series a dashboard or alert reads exists from the first scrape, so `rate()` and `increase()`
   * see the first event and an absent series never hides a problem.
   */
  private zeroInit(): void {
    for (const server of ['mirror', 'peer'] as const) {
      this.inflight.set({ server }, 0)
      this.lastPeerServe.set({ server }, 0)
      for (const kind of ['manifest', 'blob'] as const) {
        for (const source of server === 'mirror'
          ? (['local', 'peer', 'miss'] as const)
          : (['local', 'miss'] as const)) {
          this.duration.zero({ server, kind, source })
          this.ttfb.zero({ server, kind, source })
        }
      }
    }
    for (const reason of PEER_FAILURE_REASONS) this.peerFailures.inc({ reason }, 0)
    for (const result of ['hit', 'miss']) this.resolveSeconds.zero({ result })
    for (const result of ['fetched', 'refetched']) this.stripes.inc({ result }, 0)
    for (const result of ['started', 'failed']) this.stripedBlobs.inc({ result }, 0)
    this.seeRegistry('none')
  }

  /** A bounded label value; the first sight of a registry creates its series at 0 before counting. */
  private seeRegistry(registry: string): string {
    if (this.registries.has(registry)) return registry
    if (this.registries.size >= MAX_REGISTRIES) registry = 'other'
    if (this.registries.has(registry)) return registry
    this.registries.add(registry)
    for (const server of ['mirror', 'peer'] as const) {
      const sources = server === 'mirror' ? (['local', 'peer'] as const) : (['local'] as const)
      for (const kind of ['manifest', 'blob'] as const) {
        for (const source of sources) this.requests.inc({ server, kind, source, status: '200', registry }, 0)
        this.requests.inc({ server, kind, source: 'miss', status: '404', registry }, 0)
      }
      for (const source of sources) this.bytes.inc({ server, source, registry }, 0)
    }
    return registry
  }

  /** Called once per finished registry request (never for probes, scrapes or the status page). */
  observe(o: RequestOutcome): void {
    const registry = this.seeRegistry(o.registry ?? 'none')
    const source = o.source ?? 'none'
    this.requests.inc({ server: o.server, kind: o.kind, source, status: String(o.status), registry })
    if (o.bytes > 0 && o.source !== undefined && o.source !== 'miss')
      this.bytes.inc({ server: o.server, source: o.source, registry }, o.bytes)
    if (o.kind === 'manifest' || o.kind === 'blob') {
      this.duration.observe({ server: o.server, kind: o.kind, source }, o.durationSeconds)
      if (o.ttfbSeconds !== undefined)
        this.ttfb.observe({ server: o.server, kind: o.kind, source }, o.ttfbSeconds)
    }
    // A peer transfer succeeded: the mirror got content from a peer, or the peer endpoint served one.
    const transferred = o.status < 300 && (o.server === 'peer' ? o.source === 'local' : o.source === 'peer')
    if (transferred) this.lastPeerServe.set({ server: o.server }, Date.now() / 1000)
    this.activity.record(o)
  }
}

export interface NodeGaugesComponents {
  /** containerd's event stream is up (the store's own view). */
  containerdConnected: () => boolean
  /** DHT provides queued or running (router.pendingProvides()). */
  pendingProvides: () => number
}

/** Node-level gauges read at scrape time from the components' own state. */
export function registerNodeGauges(registry: Registry, components: NodeGaugesComponents): void {
  new Gauge({
    name: 'kagami_containerd_connected',
    help: '1 while the containerd event stream is connected, 0 while kagami is reconnecting',
    registers: [registry],
    collect() {
      this.set(components.containerdConnected() ? 1 : 0)
    },
  })
  new Gauge({
    name: 'kagami_pending_provides',
    help: 'DHT provide operations queued or running (connected peers already know the keys via the key exchange)',
    registers: [registry],
    collect() {
      this.set(components.pendingProvides())
    },
  })
}
