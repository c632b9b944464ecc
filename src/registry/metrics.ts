import { Counter, Gauge, Histogram, type Registry } from 'prom-client'

export type Source = 'local' | 'peer' | 'miss'

/** The registry's metrics, registered on the Registry passed in (never the global one). */
export class RegistryMetrics {
  readonly requests: Counter<'server' | 'kind' | 'source' | 'status'>
  readonly bytes: Counter<'server' | 'source'>
  readonly resolveSeconds: Histogram<'result'>
  readonly inflight: Gauge<'server'>
  readonly peerFailures: Counter<'reason'>

  constructor(registry: Registry) {
    const registers = [registry]
    this.requests = new Counter({
      name: 'kagami_requests_total',
      help: 'Registry requests by server (mirror|peer), kind (manifest|blob|base), source (local|peer|miss) and status',
      labelNames: ['server', 'kind', 'source', 'status'],
      registers,
    })
    this.bytes = new Counter({
      name: 'kagami_bytes_served_total',
      help: 'Body bytes served by server and source',
      labelNames: ['server', 'source'],
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
      help: 'Requests being served',
      labelNames: ['server'],
      registers,
    })
    this.peerFailures = new Counter({
      name: 'kagami_peer_failures_total',
      help: 'Failed peer attempts (timeout, error status, reset, digest mismatch)',
      labelNames: ['reason'],
      registers,
    })
  }
}
