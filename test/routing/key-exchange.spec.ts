import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { digestOf } from '../../src/oci/index.js'
import { digestKey } from '../../src/routing/keys.js'
import type { KadDhtRouter } from '../../src/routing/kad-dht.js'
import { eventually } from '../harness/index.js'
import { kadDhtNetwork } from './kad-dht-fixture.js'

async function holders(r: KadDhtRouter, key: ReturnType<typeof digestKey>): Promise<string[]> {
  const urls: string[] = []
  for await (const p of r.resolve(key, { signal: AbortSignal.timeout(1000) })) urls.push(p.url)
  return urls
}

/**
 * Live advertising keeps working for as long as a node lives: every change sends a new key list on its own
 * stream, so a receiver that kept streams open (8 allowed per connection) went deaf after ~8 changes while
 * still answering misses from the stale list.
 */
describe('key exchange: many successive changes', () => {
  let net: Awaited<ReturnType<typeof kadDhtNetwork>>

  beforeAll(async () => {
    net = await kadDhtNetwork(3, { recordValidityMs: 60_000, reprovideIntervalMs: 30_000 })
    await eventually(async () => {
      for (const r of net.routers) expect(r.peers().length).toBe(2)
    })
  }, 60_000)

  afterAll(async () => {
    await net?.teardown()
  })

  it('60 changes, one after another, each resolvable from every other node', async () => {
    const [a, ...others] = net.routers as [KadDhtRouter, ...KadDhtRouter[]]
    for (let i = 0; i < 60; i++) {
      const key = digestKey(digestOf(`successive-${i}`))
      await a.advertise([key])
      for (const r of others) {
        await eventually(async () => expect(await holders(r, key)).toEqual([net.urls[0]]), 5_000)
      }
    }
  }, 120_000)
})
