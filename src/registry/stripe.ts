/**
 * Striping: a big blob held by several peers, whose one peer sends it slowly, is fetched as parallel ranges,
 * one stream of stripes per peer, and handed on in order as one body. Why: one peer's link (or its busy
 * disk) caps a single-stream fetch; with three holders behind 100 Mbit/s links each, the blob arrives about
 * three times as fast (bench/stripe.ts).
 *
 * How, and what it keeps from the single-peer path (peers.ts):
 * - A body starts as always, from one peer (hedged, resumed), and its first bytes are timed. Only when they
 *   come slower than `minSingleBytesPerSecond` does the rest come as stripes: a fast stream stays as it is,
 *   because a request per stripe and a copy per byte cost more CPU than a fast link gains.
 * - The rest is cut into stripes of `stripeBytes` (4 MiB); each peer's worker claims the next stripe and
 *   fetches it with one `Range` request, reading it whole into memory. A worker may claim a stripe only
 *   within `aheadPerPeer` × peers stripes of the one being written, so at most that many stripes are held
 *   (bounded memory, back-pressure: a worker that may not claim holds no connection, so no peer body ever
 *   sits paused into its idle deadline).
 * - The body is still one stream from byte 0: the caller pipes it through the same `VerifyDigest` (the
 *   whole blob hashed in order, the last chunk held back until the digest matched). The caller's client
 *   Range is applied there, as before: striping does not change what a range costs or how it is checked.
 * - No stalls: a stripe whose peer fails (reset, no headers within the header deadline, no body progress
 *   within the idle deadline, below the throughput floor) goes back to the queue and another worker
 *   fetches the rest of it from where it stopped; that peer's worker retires and another holder (or, up to
 *   twice, the same one) is recruited. A stripe that blocks the write position while its peer is much slower than
 *   an idle worker's is taken over by that worker (the slow peer retires after two). Every wait is bound
 *   to the body's signal (the client's) and the peer deadlines.
 * - One digest cannot tell which peer sent a bad stripe. A striped body that fails its digest marks no
 *   peer: the caller fetches that blob from one peer at a time for a while (`failedTtlMs`), where a
 *   mismatch names its sender exactly (the existing corrupt-peer handling), so a corrupt peer costs one
 *   extra attempt and a good peer is never blamed.
 */
import { Readable } from 'node:stream'
import { anySignal } from 'any-signal'
import type { Logger } from 'pino'
import type { Digest } from '../oci/index.js'
import type { Peer } from '../routing/router.js'
import { PeerUnavailableError } from './errors.js'
import type { PeerLookup } from './lookup.js'
import type { RegistryMetrics } from './metrics.js'
import type { PeerResponse } from './peer-client.js'
import { PeerTooSlowError } from './resume.js'
import { IN_FLIGHT_HEADER } from './served.js'
import { abortError } from '../abort.js'

export interface StripeInit {
  /** Blobs at least this big, held by at least two peers, are striped; 0 turns striping off. */
  thresholdBytes: number
  /** One stripe: one Range request to one peer (default 4 MiB). */
  stripeBytes?: number
  /** Peers fetched from at once (default 4). */
  maxPeers?: number
  /** Stripes per peer that may be held ahead of the write position (default 2). */
  aheadPerPeer?: number
  /** How long to look for more holders once the first peer answered (default 50 ms). */
  holdersWaitMs?: number
  /** After a striped body failed its digest, that blob comes from one peer at a time for this long (30 min). */
  failedTtlMs?: number
  /**
   * A body whose first bytes come at least this fast stays with its one peer (default 256 MiB/s): striping
   * is for links that hold a peer back, and costs a request per stripe and a copy per byte, which a fast
   * stream on a busy CPU feels more than it gains (bench/stripe.ts, no link limit: 0.4×).
   */
  minSingleBytesPerSecond?: number
  /** A window of the first bytes: this many bytes or this long, whichever comes first (default a quarter of the threshold, at most 16 MiB; 100 ms). */
  probeBytes?: number
  probeMs?: number
}

export interface StripeComponents {
  logger: Logger
  metrics: RegistryMetrics
}

export interface StripedBodyInit {
  digest: Digest
  sizeBytes: number
  /** The first byte to fetch (what came before went out from the single peer's body). */
  start: number
  /** Holders to fetch from. */
  peers: Peer[]
  /** A GET with `Range: bytes=start-end` at `peer` (the caller signs it and applies the header deadline). */
  open(peer: Peer, start: number, end: number, signal: AbortSignal): Promise<PeerResponse>
  /** Another holder to recruit when workers retire; undefined when none is left. */
  another(signal: AbortSignal): Promise<Peer | undefined>
  /** A peer failed a stripe (error, freeze, trickle, much slower than the others). */
  onPeerFailure(peer: Peer, err: Error): void
  signal: AbortSignal
  /** Throughput floor per peer, as resume.ts (default 1 MiB/s over 5 s of fetching). */
  floorBytesPerSecond?: number
  floorWindowMs?: number
}

/** Fetches of one stripe (first try included) before the whole body fails. */
const MAX_STRIPE_ATTEMPTS = 6
/** Holders recruited to replace retired workers, per body. */
const MAX_RECRUITS = 8
/** A worker waiting for a stripe re-checks for one to take over at least this often. */
const RECHECK_MS = 250
/** A fetch is watched this long before it may be judged too slow and taken over. */
const MIN_OBSERVE_MS = 500
/** Take-overs of a peer's stripes before it retires from the body. */
const MAX_STRIKES = 2
/** Failures of one peer within a body before it is not asked again. */
const MAX_PEER_FAILURES = 3

/** Decides which blobs are striped and builds their bodies. */
export class Striper {
  private readonly log: Logger
  private readonly failedUntil = new Map<string, number>()

  constructor(
    private readonly components: StripeComponents,
    readonly init: StripeInit,
  ) {
    this.log = components.logger.child({ component: 'stripe' })
  }

  /** Big enough, and not recently failed its digest while striped. */
  wants(sizeBytes: number, digest: Digest): boolean {
    if (this.init.thresholdBytes <= 0 || sizeBytes < this.init.thresholdBytes) return false
    const until = this.failedUntil.get(digest)
    if (until === undefined) return true
    if (until > Date.now()) return false
    this.failedUntil.delete(digest)
    return true
  }

  /** A striped body of `digest` failed verification: fetch it from one peer at a time for a while. */
  failed(digest: Digest): void {
    if (this.failedUntil.size >= 10_000) this.failedUntil.delete(this.failedUntil.keys().next().value!)
    this.failedUntil.set(digest, Date.now() + (this.init.failedTtlMs ?? 30 * 60_000))
    this.components.metrics.stripedBlobs.inc({ result: 'failed' })
    this.log.warn({ digest }, 'striped blob failed its digest; fetching it from one peer at a time')
  }

  /**
   * The holders to stripe over: `first`, the others the lookup knows, and more found within
   * `holdersWaitMs`, except those in `failed` (peers that failed this request's race); at most `maxPeers`.
   */
  async holders(
    lookup: PeerLookup,
    first: Peer,
    failed: ReadonlySet<string>,
    signal: AbortSignal,
  ): Promise<Peer[]> {
    const max = this.init.maxPeers ?? 4
    const out = [first]
    const usable = (p: Peer): boolean => !failed.has(p.id) && !out.some((o) => o.id === p.id)
    for (const p of lookup.known) if (out.length < max && usable(p)) out.push(p)
    const deadline = anySignal([AbortSignal.timeout(this.init.holdersWaitMs ?? 50), signal])
    try {
      while (out.length < max) {
        const p = await lookup.next(deadline)
        if (p === undefined) break
        if (usable(p)) out.push(p)
      }
    } finally {
      deadline.clear()
    }
    return out
  }

  /**
   * Passes on `single` (one peer's body from byte 0, resumed as usual) and watches its first bytes: when
   * two windows of them in a row come slower than `minSingleBytesPerSecond` and at least two holders are
   * found, it closes `single` where it stands and continues with stripes from there. `switched()` says whether it did (then a digest
   * mismatch names no peer). The chunks of `single` go on untouched (pool buffers stay recyclable).
   */
  adaptive(
    single: Readable,
    init: Omit<StripedBodyInit, 'start' | 'peers'> & { holders(signal: AbortSignal): Promise<Peer[]> },
  ): { body: Readable; switched(): boolean } {
    const minRate = this.init.minSingleBytesPerSecond ?? 256 * 1024 * 1024
    const probeBytes =
      this.init.probeBytes ?? Math.min(16 * 1024 * 1024, Math.max(1024 * 1024, this.init.thresholdBytes / 4))
    const probeMs = this.init.probeMs ?? 100
    let switched = false
    let offset = 0
    // windows of the first bytes: two slow ones in a row switch (the first alone may be a cold start: the
    // first request of a process, a cold cache); a fast one ends the watch
    let windowStartMs = performance.now()
    let windowStartAt = 0
    let slowWindows = 0
    let watching = true
    // while the holders are looked for, `single` stays paused whatever the reader asks
    let deciding = false
    let source: Readable = single
    // 'data' events, not an async iterator: a byte-mode stream's iterator merges what is buffered into one
    // copy (and the pool buffers are lost); events hand on each chunk as it came
    const body = new Readable({
      objectMode: true,
      highWaterMark: 1,
      read: () => {
        if (!deciding) source.resume()
      },
      destroy: (err, cb) => {
        source.destroy()
        cb(err)
      },
    })
    const follow = (from: Readable, onData: (chunk: Buffer) => void): (() => void) => {
      source = from
      const onEnd = (): void => void body.push(null)
      const onError = (err: Error): void => void body.destroy(err)
      from.on('data', onData).once('end', onEnd).once('error', onError)
      return () => from.off('data', onData).off('end', onEnd).off('error', onError)
    }
    const decide = async (): Promise<void> => {
      const peers = await init.holders(init.signal)
      deciding = false
      if (body.destroyed) return
      if (peers.length < 2) return void single.resume()
      switched = true
      unfollow()
      single.on('error', () => undefined) // destroyed on purpose: a late error is nobody's concern
      single.destroy()
      follow(this.body({ ...init, start: offset, peers }), (chunk) => {
        if (!body.push(chunk)) source.pause()
      })
    }
    const unfollow = follow(single, (chunk) => {
      if (!body.push(chunk)) single.pause()
      offset += chunk.length
      if (!watching || offset >= init.sizeBytes) return
      const ms = performance.now() - windowStartMs
      const bytes = offset - windowStartAt
      if (bytes < probeBytes && ms < probeMs) return
      if ((bytes / Math.max(ms, 1)) * 1000 >= minRate) {
        watching = false
        return
      }
      windowStartMs += ms
      windowStartAt = offset
      if (++slowWindows < 2) return
      watching = false
      deciding = true
      single.pause()
      decide().catch((err: unknown) => body.destroy(err as Error))
    })
    return { body, switched: () => switched }
  }

  /** One body from stripes fetched in parallel, in order from `start`. */
  private body(init: StripedBodyInit): Readable {
    this.components.metrics.stripedBlobs.inc({ result: 'started' })
    const body = new StripedBody(init, {
      stripeBytes: this.init.stripeBytes ?? 4 * 1024 * 1024,
      aheadPerPeer: this.init.aheadPerPeer ?? 2,
      onStripe: (result) => this.components.metrics.stripes.inc({ result }),
      log: this.log,
    })
    return body.out
  }
}

interface Stripe {
  index: number
  start: number
  /** Inclusive. */
  end: number
  /** Bytes received so far, from `start` on. */
  received: number
  /** Received, not yet handed on. */
  queue: Buffer[]
  fetcher: Worker | undefined
  /** Stops the current fetch (a take-over). */
  cancel: (() => void) | undefined
  /** When the current fetch started, and `received` then. */
  fetchStartedMs: number
  fetchStartedAt: number
  attempts: number
}

interface Worker {
  peer: Peer
  retired: boolean
  strikes: number
  /** Bytes/s of its last whole stripe. */
  rate: number | undefined
  /** Floor accounting (as resume.ts): time spent fetching and bytes delivered in the current window. */
  waitedMs: number
  delivered: number
  /** It serves a copy still arriving (held to 1/8 of the floor, as resume.ts does). */
  inFlight?: boolean
}

const length = (s: Stripe): number => s.end - s.start + 1

class StripedBody {
  readonly out: Readable
  private readonly stripes: Stripe[] = []
  private readonly workers = new Set<Worker>()
  /** Every peer that worked on this body, and its failures here (at MAX_PEER_FAILURES it is not asked again). */
  private readonly known: Peer[] = []
  private readonly failures = new Map<string, number>()
  private readonly controller = new AbortController()
  private readonly window: number
  private waiters: (() => void)[] = []
  /** The stripe being written, and the next one never claimed. */
  private head = 0
  private nextNew = 0
  private left: number
  private reading = false
  private ended = false
  private recruits = 0
  private recruiting = false

  constructor(
    private readonly init: StripedBodyInit,
    private readonly opts: {
      stripeBytes: number
      aheadPerPeer: number
      onStripe(result: 'fetched' | 'refetched'): void
      log: Logger
    },
  ) {
    for (let start = init.start, i = 0; start < init.sizeBytes; start += opts.stripeBytes, i++) {
      this.stripes.push({
        index: i,
        start,
        end: Math.min(start + opts.stripeBytes, init.sizeBytes) - 1,
        received: 0,
        queue: [],
        fetcher: undefined,
        cancel: undefined,
        fetchStartedMs: 0,
        fetchStartedAt: 0,
        attempts: 0,
      })
    }
    this.left = this.stripes.length
    this.window = Math.max(2, opts.aheadPerPeer * init.peers.length)
    this.out = new Readable({
      // the parts are ≤ one socket read each; the stripes are the buffer, not this stream
      highWaterMark: 1024 * 1024,
      read: () => {
        this.reading = true
        this.pump()
      },
      destroy: (err, cb) => {
        this.end()
        cb(err)
      },
    })
    const onAbort = (): void => {
      this.out.destroy(abortError(init.signal))
    }
    if (init.signal.aborted) queueMicrotask(onAbort)
    else init.signal.addEventListener('abort', onAbort, { once: true })
    this.controller.signal.addEventListener('abort', () => init.signal.removeEventListener('abort', onAbort))
    for (const peer of init.peers) this.start(peer)
  }

  private start(peer: Peer): void {
    const w: Worker = { peer, retired: false, strikes: 0, rate: undefined, waitedMs: 0, delivered: 0 }
    if (!this.known.some((p) => p.id === peer.id)) this.known.push(peer)
    this.workers.add(w)
    this.work(w).catch((err: unknown) => this.fail(err as Error))
  }

  private async work(w: Worker): Promise<void> {
    while (!this.ended && !w.retired && this.left > 0) {
      const s = this.claim(w)
      if (s === undefined) await this.changed()
      else await this.fetch(w, s)
    }
    this.workers.delete(w)
    if (w.retired && !this.ended && this.left > 0) await this.recruit()
  }

  /** A stripe that lost its peer (lowest first), else the next new one within the window, else a take-over. */
  private claim(w: Worker): Stripe | undefined {
    for (let i = this.head; i < this.nextNew; i++) {
      const s = this.stripes[i] as Stripe
      if (s.fetcher === undefined && s.received < length(s)) return s
    }
    if (this.nextNew < this.stripes.length && this.nextNew < this.head + this.window)
      return this.stripes[this.nextNew++]
    const h = this.stripes[this.head]
    if (h?.fetcher !== undefined && h.fetcher !== w && this.muchSlower(h, w)) {
      const victim = h.fetcher
      h.fetcher = undefined
      h.cancel?.()
      this.strike(victim)
      return h
    }
    return undefined
  }

  /** The head stripe's peer would take over twice as long for the rest as `w` would (from `w`'s last rate). */
  private muchSlower(h: Stripe, w: Worker): boolean {
    if (w.rate === undefined) return false
    const elapsedMs = performance.now() - h.fetchStartedMs
    if (elapsedMs < MIN_OBSERVE_MS) return false
    const theirs = ((h.received - h.fetchStartedAt) / elapsedMs) * 1000
    const rest = length(h) - h.received
    return rest / Math.max(theirs, 1) > (2 * rest) / w.rate + 0.2
  }

  private strike(w: Worker): void {
    w.strikes++
    if (w.strikes < MAX_STRIKES || w.retired) return
    w.retired = true
    this.failures.set(w.peer.id, MAX_PEER_FAILURES)
    this.init.onPeerFailure(
      w.peer,
      new PeerTooSlowError(`peer ${w.peer.id} was much slower than the other holders (${w.strikes} stripes)`),
    )
  }

  private async fetch(w: Worker, s: Stripe): Promise<void> {
    s.fetcher = w
    s.attempts++
    const refetch = s.attempts > 1
    const from = s.start + s.received
    s.fetchStartedMs = performance.now()
    s.fetchStartedAt = s.received
    const headers = new AbortController()
    const signal = anySignal([headers.signal, this.controller.signal])
    let body: Readable | undefined
    s.cancel = () => {
      headers.abort()
      body?.destroy()
    }
    const mine = (): boolean => s.fetcher === w && !this.ended
    try {
      const res = await this.init.open(w.peer, from, s.end, signal)
      body = res.body
      if (!covers(res, from, s.end, this.init.sizeBytes))
        throw new PeerUnavailableError(`peer ${w.peer.id} did not answer Range ${from}-${s.end}`)
      // a copy still arriving comes no faster than its own source, and a stripe ahead of it waits: not a
      // holder to stripe over (nor a failure) while others are; the last one left is kept, with the lower
      // floor resume.ts gives such a copy
      if (res.headers[IN_FLIGHT_HEADER] !== undefined) {
        if (this.workers.size > 1) throw new StillArrivingError(w.peer.id)
        w.inFlight = true
      }
      if (!mine()) {
        body.destroy()
        return
      }
      let asked = s.fetchStartedMs
      for await (const chunk of body) {
        if (!mine()) break
        const buf = chunk as Buffer
        const n = Math.min(buf.length, length(s) - s.received)
        const now = performance.now()
        this.floor(w, now - asked, n)
        asked = now
        const part = n === buf.length ? buf : buf.subarray(0, n)
        s.queue.push(part)
        s.received += n
        if (s.received === length(s)) break // counted below before the body may end
        if (s.index === this.head) this.pump()
      }
      body.destroy()
      if (!mine()) return
      if (s.received < length(s))
        throw new PeerUnavailableError(`peer ${w.peer.id} ended stripe ${s.index} short`)
      const ms = performance.now() - s.fetchStartedMs
      w.rate = ((s.received - s.fetchStartedAt) / Math.max(ms, 1)) * 1000
      s.fetcher = undefined
      s.cancel = undefined
      this.left--
      this.opts.onStripe(refetch ? 'refetched' : 'fetched')
      if (s.index === this.head) this.pump()
    } catch (err) {
      body?.destroy()
      if (!mine()) return // taken over, or the body ended
      s.fetcher = undefined
      s.cancel = undefined
      w.retired = true
      if (err instanceof StillArrivingError) {
        s.attempts--
        this.failures.set(w.peer.id, MAX_PEER_FAILURES)
        return
      }
      // a slow peer is out; one that failed may get a second chance (a moment's overload is not a dead peer)
      const failures = (err as Error).name === 'PeerTooSlowError' ? MAX_PEER_FAILURES : 1
      this.failures.set(w.peer.id, (this.failures.get(w.peer.id) ?? 0) + failures)
      this.init.onPeerFailure(w.peer, err as Error)
      if (s.attempts >= MAX_STRIPE_ATTEMPTS) this.fail(err as Error)
    } finally {
      signal.clear()
      this.notify()
    }
  }

  /** resume.ts's floor: over each `floorWindowMs` of fetching, at least `floorBytesPerSecond`. */
  private floor(w: Worker, waitedMs: number, bytes: number): void {
    const floor = (this.init.floorBytesPerSecond ?? 1024 * 1024) / (w.inFlight === true ? 8 : 1)
    const windowMs = this.init.floorWindowMs ?? 5000
    w.waitedMs += waitedMs
    w.delivered += bytes
    if (w.waitedMs < windowMs) return
    const delivered = w.delivered
    const waited = w.waitedMs
    w.waitedMs = 0
    w.delivered = 0
    if (delivered < (floor * waited) / 1000)
      throw new PeerTooSlowError(`peer ${w.peer.id} sent ${delivered} bytes in ${Math.round(waited)} ms`)
  }

  /**
   * Replaces retired workers, up to the number the body started with: a holder the lookup has not given yet,
   * else one of this body's peers that failed only once. With no worker left, the body fails.
   */
  private async recruit(): Promise<void> {
    if (this.recruiting) return
    this.recruiting = true
    const usable = (p: Peer): boolean =>
      (this.failures.get(p.id) ?? 0) < MAX_PEER_FAILURES && ![...this.workers].some((w) => w.peer.id === p.id)
    try {
      while (
        !this.ended &&
        this.left > 0 &&
        this.workers.size < this.init.peers.length &&
        this.recruits < MAX_RECRUITS
      ) {
        this.recruits++
        const fresh = await this.init.another(this.controller.signal).catch(() => undefined)
        if (this.ended) return
        const peer = fresh !== undefined && usable(fresh) ? fresh : this.known.find(usable)
        if (peer !== undefined) this.start(peer)
        else if (fresh === undefined) break
      }
    } finally {
      this.recruiting = false
    }
    if (this.workers.size === 0 && !this.ended && this.left > 0)
      this.fail(new PeerUnavailableError('no holder left to fetch the rest of the striped blob'))
  }

  /** Hands on the head stripe's bytes, in order, while the reader wants them. */
  private pump(): void {
    if (!this.reading || this.ended) return
    while (this.head < this.stripes.length) {
      const s = this.stripes[this.head] as Stripe
      for (let part = s.queue.shift(); part !== undefined; part = s.queue.shift()) {
        if (!this.out.push(part)) {
          this.reading = false
          return
        }
      }
      if (s.received < length(s)) return
      this.head++
      this.notify() // the window moved
    }
    this.ended = true
    this.out.push(null)
    this.end()
  }

  private fail(err: Error): void {
    if (this.ended) return
    this.opts.log.debug({ digest: this.init.digest, err: err.message }, 'striped body failed')
    this.out.destroy(err)
  }

  /** Stops every fetch and wakes every waiting worker; idempotent. */
  private end(): void {
    this.ended = true
    this.controller.abort()
    for (const s of this.stripes) {
      s.cancel?.()
      s.queue = []
    }
    this.notify()
  }

  /** Resolves on the next change (a stripe's progress, a retired worker, the window moving) or soon after. */
  private changed(): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        resolve()
      }
      const timer = setTimeout(done, RECHECK_MS)
      this.waiters.push(done)
    })
  }

  private notify(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w()
  }
}

class StillArrivingError extends Error {
  override name = 'StillArrivingError'
  constructor(peer: string) {
    super(`peer ${peer} serves a copy still arriving`)
  }
}

/** The response holds exactly bytes `start`–`end` of a blob of `sizeBytes`. */
function covers(res: PeerResponse, start: number, end: number, sizeBytes: number): boolean {
  if (res.status === 200) return start === 0 && end === sizeBytes - 1
  const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.headers['content-range'] ?? '')
  return (
    res.status === 206 &&
    m !== null &&
    Number(m[1]) === start &&
    Number(m[2]) === end &&
    Number(m[3]) === sizeBytes
  )
}
