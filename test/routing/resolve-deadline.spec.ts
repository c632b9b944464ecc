/**
 * `resolve` ends when its signal aborts, whatever the DHT does. The mirror gives a lookup ~20 ms
 * (`resolveTimeout`); kad-dht ends a query only once its in-flight requests end, and at 60 nodes on one
 * loaded process a lookup with a 250 ms deadline ran for 22-34 s (bench/results/scale.md, "visibility":
 * every probe that met such a lookup saw no node resolve the new image within 15 s). Here the DHT query is
 * one that never yields and ignores its signal (a decorator on the node's kad-dht, as a frozen DHT would
 * behave): the lookup must still end once its signal aborts, with nothing found.
 */
import type { KadDHT } from '@libp2p/kad-dht'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { digestOf } from '../../src/oci/index.js'
import { KadDhtRouter } from '../../src/routing/kad-dht.js'
import { digestKey } from '../../src/routing/keys.js'

describe('resolve: the deadline holds while the DHT query does not end', () => {
  let router: KadDhtRouter
  let release: () => void = () => undefined
  let queries = 0

  beforeAll(async () => {
    router = new KadDhtRouter(
      { logger: pino({ level: 'silent' }) },
      // no key exchange: every lookup is a DHT query
      { listen: ['/ip4/127.0.0.1/tcp/0'], peerUrl: 'http://127.0.0.1:1', keyExchange: false },
    )
    await router.start()
    const dht = (router as unknown as { node: { services: { dht: KadDHT } } }).node.services.dht
    const released = new Promise<void>((r) => (release = r))
    dht.findProviders = async function* () {
      queries++
      await released // deaf to its signal, yields nothing
      yield* []
    }
  })

  afterAll(async () => {
    release()
    await router?.stop()
  })

  it('a miss ends once its signal aborts, while the DHT query it started has not ended', async () => {
    const controller = new AbortController()
    const found: string[] = []
    let ended = false
    const lookup = (async () => {
      for await (const p of router.resolve(digestKey(digestOf('resolve-deadline-miss')), {
        signal: controller.signal,
      }))
        found.push(p.id)
      ended = true
    })()
    while (queries === 0) await new Promise((r) => setImmediate(r))
    controller.abort()
    await lookup
    expect(ended).toBe(true)
    expect(found).toEqual([])
  }, 30_000)
})
