import { MemoryDatastore } from 'datastore-core'
import { Key, type Pair, type Query } from 'interface-datastore'
import type { Logger } from 'pino'

/** Reads the unsigned varint kad-dht stores as a provider record's creation time (ms). */
function readVarint(bytes: Uint8Array): number {
  let value = 0
  let scale = 1
  for (const b of bytes) {
    value += (b & 0x7f) * scale
    if ((b & 0x80) === 0) break
    scale *= 128
  }
  return value
}

export interface ProviderLimits {
  /** Records stored for one provider (default 20,000; an honest node stores ~keys × 20 / N per peer). */
  perPeer: number
  /** Records stored for all providers together (default 100,000, ~35 MiB). */
  total: number
}

const PROVIDER = '/provider/'

/**
 * kad-dht's in-memory datastore, with three changes for provider records (`…/provider/<cid>/<peer>`):
 * - records older than `validityMs` are not returned: kad-dht itself only drops them at its cleanup
 *   interval, so lookups would keep returning a node that stopped or withdrew for up to a day;
 * - a lookup reads only the records of its CID (an index), not every record in the store (~0.4 ms per
 *   1,000 records per lookup, design.md §4);
 * - records are capped per provider and in total: ADD_PROVIDER is unauthenticated, and one peer sending
 *   200k of them grew RSS by hundreds of MiB (#12). Records over a cap are dropped and logged; our own
 *   records (set by `setSelf`) are never dropped.
 */
export class ExpiringProviderDatastore extends MemoryDatastore {
  /** `…/provider/<cid>` → the full keys of its records */
  private readonly byCid = new Map<string, Set<string>>()
  private readonly perPeer = new Map<string, number>()
  private total = 0
  private dropped = 0
  private self: string | undefined
  private readonly limits: ProviderLimits
  private readonly warnedAt = new Map<string, number>()

  constructor(
    private readonly validityMs: number,
    limits: Partial<ProviderLimits> = {},
    private readonly log?: Logger,
    /** Called when one provider goes over its own cap (the router disconnects it). */
    private readonly onOverLimit?: (peer: string) => void,
    private readonly now: () => number = Date.now,
  ) {
    super()
    this.limits = { perPeer: limits.perPeer ?? 20_000, total: limits.total ?? 100_000 }
  }

  /** Our own peer id: its records are not counted against the caps. */
  setSelf(peerId: string): void {
    this.self = peerId
  }

  /** Provider records held for other nodes. */
  providerRecords(): number {
    return this.total
  }

  droppedRecords(): number {
    return this.dropped
  }

  override put(key: Key, val: Uint8Array, options?: { signal?: AbortSignal }): Key | Promise<Key> {
    const k = key.toString()
    const at = k.indexOf(PROVIDER)
    if (at < 0) return super.put(key, val, options)
    const slash = k.lastIndexOf('/')
    const cid = k.slice(0, slash)
    const peer = k.slice(slash + 1)
    const records = this.byCid.get(cid)
    if (records?.has(k) !== true) {
      if (peer !== this.self) {
        const n = this.perPeer.get(peer) ?? 0
        if (n >= this.limits.perPeer || this.total >= this.limits.total) {
          const cap = n >= this.limits.perPeer ? 'per-peer' : 'total'
          this.refuse(peer, cap)
          if (cap === 'per-peer') this.onOverLimit?.(peer)
          return key
        }
        this.perPeer.set(peer, n + 1)
        this.total++
      }
      if (records === undefined) this.byCid.set(cid, new Set([k]))
      else records.add(k)
    }
    return super.put(key, val, options)
  }

  override delete(key: Key, options?: { signal?: AbortSignal }): void | Promise<void> {
    const k = key.toString()
    if (k.includes(PROVIDER)) {
      const slash = k.lastIndexOf('/')
      const cid = k.slice(0, slash)
      const peer = k.slice(slash + 1)
      const records = this.byCid.get(cid)
      if (records?.delete(k) === true) {
        if (records.size === 0) this.byCid.delete(cid)
        if (peer !== this.self) {
          const n = (this.perPeer.get(peer) ?? 1) - 1
          if (n <= 0) this.perPeer.delete(peer)
          else this.perPeer.set(peer, n)
          this.total--
        }
      }
    }
    return super.delete(key, options)
  }

  override async *_all(q: Query, options?: { signal?: AbortSignal }): AsyncGenerator<Pair> {
    const cutoff = this.now() - this.validityMs
    const prefix = q.prefix ?? ''
    const at = prefix.indexOf(PROVIDER)
    if (at >= 0 && prefix.length > at + PROVIDER.length && !prefix.endsWith('/')) {
      // one CID's records: read them through the index
      for (const k of this.byCid.get(prefix) ?? []) {
        const pair = await this.pairOf(k, options)
        if (pair !== undefined && readVarint(pair.value) >= cutoff) yield pair
      }
      return
    }
    for await (const pair of super._all(q, options)) {
      if (pair.key.toString().includes(PROVIDER) && readVarint(pair.value) < cutoff) continue
      yield pair
    }
  }

  private async pairOf(k: string, options?: { signal?: AbortSignal }): Promise<Pair | undefined> {
    const key = new Key(k)
    try {
      return { key, value: await this.get(key, options) }
    } catch {
      return undefined
    }
  }

  private refuse(peer: string, cap: 'per-peer' | 'total'): void {
    this.dropped++
    const last = this.warnedAt.get(peer) ?? 0
    if (this.now() - last < 60_000) return
    this.warnedAt.set(peer, this.now())
    if (this.warnedAt.size > 1000) this.warnedAt.clear()
    this.log?.warn(
      { peer, cap, limits: this.limits, dropped: this.dropped },
      'provider records over the cap; dropping them and disconnecting the peer',
    )
  }
}
