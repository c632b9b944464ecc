/**
 * Identify runs once per connection, when it opens, with a 5 s deadline; libp2p never runs it again. A
 * peer whose identify timed out (a node joining a few hundred peers at once, on a loaded CPU) kept an
 * unknown endpoint URL for the life of the connection: the key exchange still held its list, but `resolve`
 * skipped it, so nothing it pulled was found from here. The router identifies such a connection again.
 */
import type { Connection, Libp2p, Stream } from '@libp2p/interface'
import pino from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { digestOf } from '../../src/oci/index.js'
import { KadDhtRouter } from '../../src/routing/kad-dht.js'
import { digestKey } from '../../src/routing/keys.js'
import { eventually } from '../harness/index.js'

const IDENTIFY = '/ipfs/id/1.0.0'

interface Registrar {
  getHandler(p: string): { handler: (s: Stream, c: Connection) => void; options: Record<string, unknown> }
}

describe('identify that timed out on a connection', () => {
  const routers: KadDhtRouter[] = []
  afterAll(async () => {
    for (const r of routers.reverse()) await r.stop()
  })

  it('is run again: the peer’s endpoint becomes known and its keys resolvable', async () => {
    const logger = pino({ level: 'silent' })
    const b = new KadDhtRouter(
      { logger },
      { listen: ['/ip4/127.0.0.1/tcp/0'], peerUrl: 'http://127.0.0.1:41901' },
    )
    await b.start()
    routers.push(b)
    // b answers no identify request until `frozen` is cleared: a's identify of b times out
    const node = (b as unknown as { node: { components: { registrar: Registrar } } }).node
    const libp2p = (b as unknown as { node: Libp2p }).node
    const real = node.components.registrar.getHandler(IDENTIFY)
    const held: Stream[] = []
    let frozen = true
    await libp2p.unhandle(IDENTIFY)
    await libp2p.handle(
      IDENTIFY,
      (stream, connection) => (frozen ? void held.push(stream) : real.handler(stream, connection)),
      real.options,
    )
    const key = digestKey(digestOf('reidentify'))
    await b.advertise([key])

    const a = new KadDhtRouter(
      { logger },
      {
        listen: ['/ip4/127.0.0.1/tcp/0'],
        peerUrl: 'http://127.0.0.1:41902',
        bootstrap: b.multiaddrs().map(String),
      },
    )
    await a.start()
    routers.push(a)
    // a's identify gave up (it closed the stream b held), and b answers again from now on
    await eventually(async () => expect(held.some((s) => s.status !== 'open')).toBe(true), 20_000)
    frozen = false

    await eventually(async () => expect(a.peers().map((p) => p.id)).toEqual([b.peerId]), 20_000)
    await eventually(async () => {
      const found: string[] = []
      for await (const p of a.resolve(key, { signal: AbortSignal.timeout(1000) })) found.push(p.url)
      expect(found).toEqual(['http://127.0.0.1:41901'])
    }, 20_000)
  }, 60_000)
})
