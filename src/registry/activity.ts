import type { RequestOutcome, ServerName, Source } from './metrics.js'

/** One line of the status page's "recent requests". */
export interface RecentRequest {
  /** Unix ms when the response finished. */
  at: number
  server: ServerName
  method: string
  kind: string
  ref?: string
  repository?: string
  registry?: string
  status: number
  source?: Source
  peer?: string
  bytes: number
  durationMs: number
}

/** Mirror traffic in one time bucket, for the hit-ratio and bytes charts. */
export interface HistoryBucket {
  /** Unix ms at the bucket's start. */
  at: number
  local: number
  peer: number
  miss: number
  bytesLocal: number
  bytesPeer: number
}

/** What this node fetched from one peer, and when. */
export interface PeerTraffic {
  bytesFrom: number
  requestsFrom: number
  /** Unix ms of the last successful fetch from this peer. */
  lastFetchAt: number
}

/** A request being served now. */
export interface InflightRequest {
  server: ServerName
  method: string
  path: string
  startedAt: number
}

export interface ActivityInit {
  recentSize?: number
  bucketMs?: number
  buckets?: number
  now?: () => number
}

const MAX_INFLIGHT_SHOWN = 1000

/**
 * Bounded in-memory record of registry traffic for the status page: the last requests, per-minute-ish
 * totals, bytes per peer. Everything here has a fixed upper size (ring buffers, a capped map).
 */
export class Activity {
  private readonly recentSize: number
  private readonly bucketMs: number
  private readonly bucketCount: number
  private readonly now: () => number
  private readonly ring: RecentRequest[] = []
  private next = 0
  private readonly history: HistoryBucket[] = []
  private readonly peers = new Map<string, PeerTraffic>()
  private readonly inflightRequests = new Map<object, InflightRequest>()
  /** Mirror totals since start, by source. */
  readonly totals = { local: 0, peer: 0, miss: 0, bytesLocal: 0, bytesPeer: 0 }
  /** What the peer endpoint served to other nodes. */
  readonly servedToPeers = { requests: 0, bytes: 0, lastAt: 0 }

  constructor(init: ActivityInit = {}) {
    this.recentSize = init.recentSize ?? 100
    this.bucketMs = init.bucketMs ?? 10_000
    this.bucketCount = init.buckets ?? 90
    this.now = init.now ?? Date.now
  }

  begin(token: object, r: Omit<InflightRequest, 'startedAt'>): void {
    if (this.inflightRequests.size < MAX_INFLIGHT_SHOWN)
      this.inflightRequests.set(token, { ...r, startedAt: this.now() })
  }

  end(token: object): void {
    this.inflightRequests.delete(token)
  }

  record(o: RequestOutcome): void {
    const at = this.now()
    const entry: RecentRequest = {
      at,
      server: o.server,
      method: o.method,
      kind: o.kind,
      ref: o.ref,
      repository: o.repository,
      registry: o.registry,
      status: o.status,
      source: o.source,
      peer: o.peer,
      bytes: o.bytes,
      durationMs: Math.round(o.durationSeconds * 10_000) / 10,
    }
    if (this.ring.length < this.recentSize) this.ring.push(entry)
    else this.ring[this.next] = entry
    this.next = (this.next + 1) % this.recentSize

    if (o.server === 'peer') {
      if (o.status < 300) {
        this.servedToPeers.requests++
        this.servedToPeers.bytes += o.bytes
        this.servedToPeers.lastAt = at
      }
      return
    }
    if (o.source === undefined || (o.kind !== 'manifest' && o.kind !== 'blob')) return
    const b = this.bucket(at)
    b[o.source]++
    this.totals[o.source]++
    if (o.source === 'local') {
      b.bytesLocal += o.bytes
      this.totals.bytesLocal += o.bytes
    } else if (o.source === 'peer') {
      b.bytesPeer += o.bytes
      this.totals.bytesPeer += o.bytes
      if (o.peer !== undefined && o.status < 300) {
        const t = this.peers.get(o.peer) ?? { bytesFrom: 0, requestsFrom: 0, lastFetchAt: 0 }
        t.bytesFrom += o.bytes
        t.requestsFrom++
        t.lastFetchAt = at
        // bounded: peers come and go; keep the most recently active ones
        this.peers.delete(o.peer)
        this.peers.set(o.peer, t)
        if (this.peers.size > 1024) this.peers.delete(this.peers.keys().next().value as string)
      }
    }
  }

  private bucket(at: number): HistoryBucket {
    const start = at - (at % this.bucketMs)
    const last = this.history.at(-1)
    if (last !== undefined && last.at === start) return last
    const b: HistoryBucket = { at: start, local: 0, peer: 0, miss: 0, bytesLocal: 0, bytesPeer: 0 }
    this.history.push(b)
    while (this.history.length > this.bucketCount) this.history.shift()
    return b
  }

  /** Newest first. */
  recent(limit = this.recentSize): RecentRequest[] {
    const inOrder = [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)]
    return inOrder.reverse().slice(0, limit)
  }

  /** One bucket per interval over the whole window, oldest first, empty intervals included. */
  buckets(): { bucketMs: number; buckets: HistoryBucket[] } {
    const now = this.now()
    const end = now - (now % this.bucketMs)
    const byStart = new Map(this.history.map((b) => [b.at, b]))
    const out: HistoryBucket[] = []
    for (let i = this.bucketCount - 1; i >= 0; i--) {
      const at = end - i * this.bucketMs
      out.push(byStart.get(at) ?? { at, local: 0, peer: 0, miss: 0, bytesLocal: 0, bytesPeer: 0 })
    }
    return { bucketMs: this.bucketMs, buckets: out }
  }

  peerTraffic(id: string): PeerTraffic | undefined {
    return this.peers.get(id)
  }

  /** Peers this node fetched from, most recent last. */
  peerIds(): string[] {
    return [...this.peers.keys()]
  }

  inflight(): InflightRequest[] {
    return [...this.inflightRequests.values()]
  }
}
