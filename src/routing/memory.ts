import { setTimeout as sleep } from 'node:timers/promises'
import type { AbortOptions } from '../abort.js'
import { keyToString, type RoutingKey } from './keys.js'
import type { Peer, ResolveOptions, Router } from './router.js'

/** The shared "DHT" of in-process memory routers: key → providers. */
export class MemoryNetwork {
  readonly providers = new Map<string, Set<string>>()
  readonly nodes = new Map<string, MemoryRouter>()
}

export function memoryNetwork(): MemoryNetwork {
  return new MemoryNetwork()
}

export interface MemoryRouterInit {
  id: string
  url: string
  /** Simulated lookup latency per provider found. */
  lookupDelayMs?: number
}

/** A Router over a shared in-memory map, for fast tests of other layers. Passes the router conformance suite. */
export class MemoryRouter implements Router {
  private running = false
  private readonly advertised = new Set<string>()

  constructor(
    private readonly components: { network: MemoryNetwork },
    private readonly init: MemoryRouterInit,
  ) {}

  get id(): string {
    return this.init.id
  }

  get url(): string {
    return this.init.url
  }

  async start(): Promise<void> {
    this.running = true
    this.components.network.nodes.set(this.init.id, this)
  }

  async stop(): Promise<void> {
    this.running = false
    this.components.network.nodes.delete(this.init.id)
  }

  isReady(): boolean {
    return this.running
  }

  async advertise(keys: RoutingKey[], options: AbortOptions = {}): Promise<void> {
    for (const key of keys) {
      options.signal?.throwIfAborted()
      const k = keyToString(key)
      this.advertised.add(k)
      const set = this.components.network.providers.get(k) ?? new Set<string>()
      set.add(this.init.id)
      this.components.network.providers.set(k, set)
    }
  }

  async withdraw(keys: RoutingKey[], options: AbortOptions = {}): Promise<void> {
    for (const key of keys) {
      options.signal?.throwIfAborted()
      const k = keyToString(key)
      this.advertised.delete(k)
      this.components.network.providers.get(k)?.delete(this.init.id)
    }
  }

  advertisedCount(): number {
    return this.advertised.size
  }

  async *resolve(key: RoutingKey, options: ResolveOptions = {}): AsyncIterable<Peer> {
    const ids = [...(this.components.network.providers.get(keyToString(key)) ?? [])]
    let yielded = 0
    for (const id of ids) {
      if (options.signal?.aborted === true) return
      if (id === this.init.id) continue
      const node = this.components.network.nodes.get(id)
      if (node === undefined) continue // a stopped provider's record is not returned
      if (this.init.lookupDelayMs !== undefined) {
        try {
          await sleep(this.init.lookupDelayMs, undefined, { signal: options.signal })
        } catch {
          return
        }
      }
      yield { id, url: node.url }
      if (++yielded === options.limit) return
    }
  }

  peers(): Peer[] {
    return [...this.components.network.nodes.values()]
      .filter((n) => n !== this)
      .map((n) => ({ id: n.id, url: n.url }))
  }
}

export function memoryRouter(components: { network: MemoryNetwork }, init: MemoryRouterInit): MemoryRouter {
  return new MemoryRouter(components, init)
}
