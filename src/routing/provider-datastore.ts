import { MemoryDatastore } from 'datastore-core'
import type { Pair, Query } from 'interface-datastore'

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

/**
 * kad-dht's in-memory datastore, except that provider records older than `validityMs` are not returned.
 * kad-dht itself only drops them at its cleanup interval, so lookups would keep returning a node that
 * stopped or withdrew for up to a day; with this, for at most the record validity.
 */
export class ExpiringProviderDatastore extends MemoryDatastore {
  constructor(
    private readonly validityMs: number,
    private readonly now: () => number = Date.now,
  ) {
    super()
  }

  override async *_all(q: Query, options?: { signal?: AbortSignal }): AsyncGenerator<Pair> {
    const cutoff = this.now() - this.validityMs
    for await (const pair of super._all(q, options)) {
      if (pair.key.toString().includes('/provider/') && readVarint(pair.value) < cutoff) continue
      yield pair
    }
  }
}
