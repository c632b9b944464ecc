import type { Peer } from '../routing/router.js'
import { PeerUnavailableError } from './errors.js'

/** Where a race gets its next peer (lookup.ts). */
export interface PeerQueue {
  next(signal?: AbortSignal): Promise<Peer | undefined>
}

/** Hedge delay from observed header latencies: an exponential moving average with bounds. */
export class HedgeDelay {
  private averageMs: number | undefined

  constructor(private readonly init: { initialMs: number; minMs: number; maxMs: number }) {}

  observe(latencyMs: number): void {
    this.averageMs = this.averageMs === undefined ? latencyMs : 0.8 * this.averageMs + 0.2 * latencyMs
  }

  get ms(): number {
    const base = this.averageMs === undefined ? this.init.initialMs : 3 * this.averageMs
    return Math.min(this.init.maxMs, Math.max(this.init.minMs, base))
  }
}

export interface RaceInit {
  hedgeDelayMs: number
  signal: AbortSignal
  /** Called for each failed attempt (warn log with the peer). */
  onFailure?: (peer: Peer, err: unknown) => void
}

export interface RaceWin<T> {
  peer: Peer
  value: T
  /** Aborts the winner's request; call it when done with the value's body. */
  abort(): void
}

/**
 * Hedged attempts: starts with `first`, starts the next peer after the hedge delay or as soon as an attempt
 * fails; the first success wins and the losers are aborted (their bodies destroyed by their signal).
 */
export async function race<T>(
  source: PeerQueue,
  first: Peer,
  attempt: (peer: Peer, signal: AbortSignal) => Promise<T>,
  init: RaceInit,
): Promise<RaceWin<T>> {
  type Event =
    | { kind: 'done'; ok: true; peer: Peer; value: T; controller: AbortController }
    | { kind: 'done'; ok: false; peer: Peer; err: unknown }
    | { kind: 'hedge' }
    | { kind: 'peer'; peer: Peer | undefined }
  const running = new Map<Peer, { controller: AbortController; promise: Promise<Event> }>()
  const start = (peer: Peer): void => {
    const controller = new AbortController()
    const onAbort = (): void => controller.abort(init.signal.reason)
    init.signal.addEventListener('abort', onAbort, { once: true })
    const promise = attempt(peer, controller.signal).then(
      (value): Event => ({ kind: 'done', ok: true, peer, value, controller }),
      (err: unknown): Event => ({ kind: 'done', ok: false, peer, err }),
    )
    void promise.finally(() => init.signal.removeEventListener('abort', onAbort))
    running.set(peer, { controller, promise })
  }

  let lastError: unknown
  let exhausted = false
  let hedgeDue = false
  let nextPeer: Promise<Event> | undefined
  start(first)
  while (running.size > 0 || !exhausted) {
    if (running.size === 0) hedgeDue = true // every attempt failed: ask the next peer now
    const waits = [...running.values()].map((r) => r.promise)
    let timer: NodeJS.Timeout | undefined
    if (!exhausted) {
      if (hedgeDue) {
        nextPeer ??= source.next(init.signal).then((peer): Event => ({ kind: 'peer', peer }))
        waits.push(nextPeer)
      } else {
        waits.push(
          new Promise<Event>(
            (resolve) => (timer = setTimeout(() => resolve({ kind: 'hedge' }), init.hedgeDelayMs)),
          ),
        )
      }
    }
    const event = await Promise.race(waits)
    clearTimeout(timer)
    if (event.kind === 'hedge') {
      hedgeDue = true
    } else if (event.kind === 'peer') {
      nextPeer = undefined
      hedgeDue = false
      if (event.peer === undefined) exhausted = true
      else start(event.peer)
    } else {
      running.delete(event.peer)
      if (event.ok) {
        for (const r of running.values()) r.controller.abort()
        return { peer: event.peer, value: event.value, abort: () => event.controller.abort() }
      }
      lastError = event.err
      if (!init.signal.aborted) init.onFailure?.(event.peer, event.err)
    }
  }
  throw lastError instanceof Error ? lastError : new PeerUnavailableError('no peer could serve the request')
}
