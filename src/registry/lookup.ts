import { anySignal, type ClearableSignal } from 'any-signal'
import type { RoutingKey } from '../routing/keys.js'
import type { Peer, Router } from '../routing/router.js'

export interface PeerLookupInit {
  /** The client's signal: the lookup ends with the request. */
  signal: AbortSignal
  /** Peers never to yield (e.g. suspects for this digest). */
  skip?: (peer: Peer) => boolean
}

/**
 * One request's search for peers. It owns the lookup's signal, the peers found and the ones tried, and its
 * own end: `close()` stops the router's query. A manifest closes it once fetched; a blob only when its body
 * is done, because a resume may need another peer.
 */
export class PeerLookup {
  private readonly controller = new AbortController()
  private readonly signal: ClearableSignal
  private readonly iterator: AsyncIterator<Peer>
  private readonly found: Peer[] = []
  private readonly attempted: string[] = []
  private pending: Promise<IteratorResult<Peer>> | undefined
  private exhausted = false
  private closed = false

  constructor(
    router: Router,
    key: RoutingKey,
    private readonly init: PeerLookupInit,
  ) {
    this.signal = anySignal([this.controller.signal, init.signal])
    this.iterator = router.resolve(key, { signal: this.signal })[Symbol.asyncIterator]()
  }

  /** Peers found so far. */
  get known(): readonly Peer[] {
    return this.found
  }

  /** The next new peer, or undefined when the lookup is exhausted or `signal` aborts first. */
  async next(signal?: AbortSignal): Promise<Peer | undefined> {
    for (;;) {
      if (this.exhausted || this.closed || signal?.aborted === true) return undefined
      this.pending ??= this.iterator.next()
      let onAbort: (() => void) | undefined
      const aborted = new Promise<'aborted'>((resolve) => {
        onAbort = () => resolve('aborted')
        signal?.addEventListener('abort', onAbort, { once: true })
      })
      const r = await Promise.race([this.pending, aborted])
      if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort)
      if (r === 'aborted') return undefined // the lookup keeps running; a later next() picks it up
      this.pending = undefined
      if (r.done === true) {
        this.exhausted = true
        return undefined
      }
      if (this.init.skip?.(r.value) === true) continue
      this.found.push(r.value)
      return r.value
    }
  }

  /** Records an attempt at `peer` (race and resume both do). */
  tried(peer: Peer): void {
    this.attempted.push(peer.id)
  }

  /**
   * The peer to resume from: a known peer not tried yet, else a new one from the lookup (within
   * `timeoutMs`), else one that failed once but was not the last to fail.
   */
  async resumeFrom(timeoutMs: number): Promise<Peer | undefined> {
    const untried = this.found.find((p) => !this.attempted.includes(p.id))
    if (untried !== undefined) return untried
    const fresh = await this.next(AbortSignal.timeout(timeoutMs))
    if (fresh !== undefined) return fresh
    const last = this.attempted.at(-1)
    return this.found.find((p) => this.attempted.includes(p.id) && p.id !== last)
  }

  /** Ends the lookup; idempotent. */
  close(): void {
    if (this.closed) return
    this.closed = true
    this.controller.abort()
    this.signal.clear()
    // the router ends its query when the consumer returns
    void this.iterator.return?.().catch(() => undefined)
  }
}
