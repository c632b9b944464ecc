import type { AbortOptions } from '../abort.js'
import type { RoutingKey } from './keys.js'

/** A node that can serve content: its id and the base URL of its kagami peer endpoint. */
export interface Peer {
  id: string
  /** e.g. `http://10.0.0.7:29021` — the peer endpoint, which serves only that node's local content. */
  url: string
}

export interface ResolveOptions extends AbortOptions {
  /** Stop after this many peers. */
  limit?: number
}

/**
 * Who has what. `resolve` yields peers as they are found, never this node, each at most once, and ends when
 * the lookup is exhausted, `limit` is reached, or the signal aborts — it never hangs without a signal bound.
 */
export interface Router {
  start(): Promise<void>
  stop(): Promise<void>
  /** True once the router can answer lookups (a lone node is ready by itself). */
  isReady(): boolean
  advertise(keys: RoutingKey[], options?: AbortOptions): Promise<void>
  withdraw(keys: RoutingKey[], options?: AbortOptions): Promise<void>
  resolve(key: RoutingKey, options?: ResolveOptions): AsyncIterable<Peer>
  /** Peers currently connected, for status and metrics. */
  peers(): Peer[]
}
