/**
 * In a sampled view, connections that carry no stream (a DHT walk's, kept by kad-dht until libp2p's 1,024
 * limit) are closed; the exchange's connections, and every connection of a full view, stay.
 */
import type { Connection } from '@libp2p/interface'
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

const fast = { provideSettleMs: 0, idleConnectionMs: 1000 }

const connections = (r: KadDhtRouter): Connection[] =>
  (r as unknown as { node: { getConnections(): Connection[] } }).node.getConnections()

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

describe('idle connections', () => {
  it('a sampled node closes connections without streams and still finds keys over the DHT', async () => {
    // no re-bootstrap every second here: it would dial the closed connections again at once
    const rs = await joinRouters(routers, 5, 41900, {
      ...fast,
      keyExchangeInit: { maxPeers: 1 },
      rebootstrapIntervalMs: 600_000,
    })
    const key = digestKey(digestOf('idle-connections'))
    await rs[0]!.advertise([key])
    // what a node still holds after the sweeps carries streams (its exchange peers)
    const last = rs[4]!
    await eventually(async () => {
      expect(rs.reduce((n, r) => n + r.routingStats().idleClosed, 0)).toBeGreaterThan(0)
      for (const c of connections(last)) expect(c.streams.length).toBeGreaterThan(0)
    }, 30_000)
    // and a lookup dials again what it needs
    await eventually(async () => {
      const urls: string[] = []
      for await (const p of last.resolve(key, { signal: AbortSignal.timeout(3000) })) urls.push(p.url)
      expect(urls).toEqual(['http://127.0.0.1:41900'])
    }, 20_000)
  }, 60_000)

  it('a full view keeps every connection', async () => {
    const rs = await joinRouters(routers, 4, 41900, fast)
    await eventually(async () => {
      for (const r of rs) expect(r.routingStats().exchange?.peers).toBe(3)
    }, 20_000)
    await sleep(3000)
    for (const r of rs) expect(r.routingStats()).toMatchObject({ connections: 3, idleClosed: 0 })
  }, 60_000)
})
