/**
 * Above its full view (maxPeers + 1 nodes) a node holds the lists of a sample of `samplePeers`; a full view
 * that becomes a sample lets go of the other lists; content outside the sample is found on the DHT.
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
  for await (const p of r.resolve(key, { signal: AbortSignal.timeout(3000) })) out.push(p.url)
  return out.sort()
}

const init = { provideSettleMs: 0, keyExchangeInit: { maxPeers: 3, samplePeers: 2 } }

describe('sampled view', () => {
  it('a full view that becomes a sample keeps samplePeers lists, and every key is still found', async () => {
    const first = await joinRouters(routers, 4, 42000, init)
    await eventually(async () => {
      for (const r of first) expect(r.routingStats().exchange?.peers).toBe(3)
    }, 20_000)
    // two more nodes: 5 peers known over a peer set of 3
    await joinRouters(routers, 2, 42000, init)
    await eventually(async () => {
      for (const r of routers) expect(r.routingStats().exchange).toMatchObject({ peers: 2, complete: false })
    }, 30_000)
    const key = digestKey(digestOf('sampled-view'))
    await routers[5]!.advertise([key])
    for (const r of routers.slice(0, 5))
      await eventually(async () => expect(await urls(r, key)).toEqual(['http://127.0.0.1:42005']), 20_000)
  }, 90_000)
})
