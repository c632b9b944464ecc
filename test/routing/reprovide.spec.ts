/**
 * Re-providing: our records are published again before the nodes storing them drop them, at an interval
 * that follows the cluster size once the key exchange holds a sample (re-provides were ~74 % of a node's
 * modelled routing traffic at 5,000 nodes; bench/results/scale.md).
 */
import { afterEach, describe, expect, it } from 'vitest'
import { digestOf } from '../../src/oci/index.js'
import type { KadDhtRouter } from '../../src/routing/kad-dht.js'
import { digestKey } from '../../src/routing/keys.js'
import { eventually } from '../harness/index.js'
import { joinRouters } from './kad-dht-fixture.js'

const routers: KadDhtRouter[] = []
afterEach(async () => {
  await Promise.all(routers.splice(0).map((r) => r.stop()))
})

async function urls(r: KadDhtRouter, key: ReturnType<typeof digestKey>): Promise<string[]> {
  const out: string[] = []
  for await (const p of r.resolve(key, { signal: AbortSignal.timeout(2000) })) out.push(p.url)
  return out
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

describe('re-providing', () => {
  it('a record outlives three validity periods: it is provided again before the storers drop it', async () => {
    const [a, , c] = await joinRouters(routers, 3, 41800, {
      keyExchange: false,
      recordValidityMs: 3000,
      reprovideIntervalMs: 1000,
    })
    await eventually(async () => expect(c!.routingTableSize()).toBe(2), 20_000)
    const key = digestKey(digestOf('reprovide-outlives'))
    await a!.advertise([key])
    await eventually(async () => expect(await urls(c!, key)).toEqual(['http://127.0.0.1:41800']), 10_000)
    await sleep(9000)
    expect(a!.routingStats().reprovideQueued).toBeGreaterThan(0)
    expect(await urls(c!, key)).toEqual(['http://127.0.0.1:41800'])
  }, 60_000)

  it('in a sampled view the interval stretches with the nodes the exchange knows, below the validity', async () => {
    // a peer set of 1 in a 4-node cluster: every node holds a sample
    const rs = await joinRouters(routers, 4, 41800, {
      recordValidityMs: 10_000,
      reprovideIntervalMs: 1000,
      provideSettleMs: 0,
      keyExchangeInit: { maxPeers: 1 },
    })
    // 4 nodes known over a peer set of 1 + 1: twice the configured interval
    await eventually(async () => {
      for (const r of rs) expect(r.routingStats().reprovideEveryMs).toBe(2000)
    }, 20_000)
    const key = digestKey(digestOf('reprovide-sampled'))
    await rs[0]!.advertise([key])
    for (const r of rs.slice(1))
      await eventually(async () => expect(await urls(r, key)).toEqual(['http://127.0.0.1:41800']), 20_000)
  }, 60_000)

  it('a sampled node provides its rare keys, not the keys its sample holds', async () => {
    // every node holds `common`; a peer set of 1, and one holder is enough to count as popular
    const common = digestKey(digestOf('sampled-common'))
    const rare = digestKey(digestOf('sampled-rare'))
    const init = { provideSettleMs: 0, popularHolders: 1, keyExchangeInit: { maxPeers: 1 } }
    const rs = await joinRouters(routers, 3, 41800, init)
    await Promise.all(rs.map((r) => r.advertise([common])))
    const [late] = await joinRouters(routers, 1, 41800, init) // http://127.0.0.1:41803
    await late!.advertise([common, rare])
    await eventually(async () => expect(late!.routingStats().provided).toBe(1), 20_000)
    await eventually(async () => expect(await urls(rs[1]!, rare)).toEqual([`http://127.0.0.1:41803`]), 20_000)
    await sleep(2000)
    expect(late!.routingStats()).toMatchObject({ provided: 1, pendingProvides: 0 })
  }, 60_000)
})
