import { createSocket, type Socket } from 'node:dgram'
import { createServer, type Server } from 'node:net'
import { Resolver } from 'node:dns/promises'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { digestOf } from '../../src/oci/index.js'
import { KadDhtRouter } from '../../src/routing/kad-dht.js'
import { digestKey } from '../../src/routing/keys.js'
import { eventually, freePort } from '../harness/index.js'

/** A tiny authoritative DNS server on 127.0.0.1: answers A queries for `name` with `addresses`. */
async function dnsServer(name: string, addresses: () => string[]): Promise<{ port: number; close(): void }> {
  const socket: Socket = createSocket('udp4')
  socket.on('message', (msg, rinfo) => {
    // question: labels from byte 12 to the zero label, then qtype and qclass
    let i = 12
    const labels: string[] = []
    while (msg[i] !== 0 && i < msg.length) {
      const len = msg[i] as number
      labels.push(msg.subarray(i + 1, i + 1 + len).toString('ascii'))
      i += 1 + len
    }
    const question = msg.subarray(12, i + 5)
    const qtype = msg.readUInt16BE(i + 1)
    const match = labels.join('.').toLowerCase() === name && qtype === 1
    const answers = match ? addresses() : []
    const header = Buffer.alloc(12)
    msg.copy(header, 0, 0, 2) // id
    header.writeUInt16BE(0x8180 | (match ? 0 : 3), 2) // response, recursion available, NOERROR/NXDOMAIN
    header.writeUInt16BE(1, 4)
    header.writeUInt16BE(answers.length, 6)
    const records = answers.map((ip) => {
      const r = Buffer.alloc(16)
      r.writeUInt16BE(0xc00c, 0) // pointer to the question name
      r.writeUInt16BE(1, 2) // A
      r.writeUInt16BE(1, 4) // IN
      r.writeUInt32BE(5, 6) // TTL
      r.writeUInt16BE(4, 10)
      ip.split('.').forEach((o, j) => r.writeUInt8(Number(o), 12 + j))
      return r
    })
    socket.send(Buffer.concat([header, question, ...records]), rinfo.port, rinfo.address)
  })
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
  return { port: socket.address().port, close: () => socket.close() }
}

describe('bootstrap through DNS (the chart’s headless Service), with a real DNS answer', () => {
  const name = 'kagami-bootstrap.kagami.svc.cluster.local'
  const ips = ['127.0.0.11', '127.0.0.12', '127.0.0.13', '127.0.0.14', '127.0.0.15']
  const routers: KadDhtRouter[] = []
  let dns: Awaited<ReturnType<typeof dnsServer>>
  let started: string[] = []

  beforeAll(async () => {
    dns = await dnsServer(name, () => started)
    const resolver = new Resolver({ timeout: 1000, tries: 2 })
    resolver.setServers([`127.0.0.1:${dns.port}`])
    const port = await freePort()
    // Every node listens on its own loopback address and the same port, as nodes of a cluster do.
    for (const [i, ip] of ips.entries()) {
      const r = new KadDhtRouter(
        { logger: pino({ level: 'silent' }) },
        {
          listen: [`/ip4/${ip}/tcp/${port}`],
          peerUrl: `http://${ip}:30021`,
          bootstrap: [`dns:${name}:${port}`],
          rebootstrapIntervalMs: 500,
          resolveHost: (host) => resolver.resolve4(host),
          keyExchange: i % 2 === 0,
        },
      )
      await r.start()
      routers.push(r)
      // the first node starts alone: DNS lists only itself, and it is ready by itself
      if (i === 0) {
        started = [ip]
        await eventually(async () => expect(r.isReady()).toBe(true))
      }
    }
    // the others appear in DNS later: node 0 must join them by re-bootstrapping
    started = [...ips]
  }, 60_000)

  afterAll(async () => {
    await Promise.all(routers.map((r) => r.stop()))
    dns?.close()
  })

  // Outcomes only: how many DNS queries that takes depends on who dials whom first.
  it('every node finds the others through the DNS name, including the one that started first', async () => {
    await eventually(async () => {
      for (const r of routers) expect(r.peers().length).toBe(ips.length - 1)
    }, 30_000)
    // the first node knows every other node's peer endpoint, though DNS listed only itself when it started
    expect(
      routers[0]!
        .peers()
        .map((p) => p.url)
        .sort(),
    ).toEqual(ips.slice(1).map((ip) => `http://${ip}:30021`))
    const key = digestKey(digestOf('dns-bootstrap'))
    await routers[0]!.advertise([key])
    for (const r of routers.slice(1)) {
      await eventually(async () => {
        const urls: string[] = []
        for await (const p of r.resolve(key, { signal: AbortSignal.timeout(1000) })) urls.push(p.url)
        expect(urls).toEqual(['http://127.0.0.11:30021'])
      })
    }
  }, 60_000)
})

describe('bootstrap through a name that lists many nodes', () => {
  it('a round dials 3 of them, not all (the headless Service of a large cluster lists every pod)', async () => {
    const port = await freePort()
    const ips = Array.from({ length: 20 }, (_, i) => `127.0.0.${21 + i}`)
    // plain TCP listeners that count who dialled them (the handshake then fails, which is fine here)
    const dialled = new Set<string>()
    const servers = await Promise.all(
      ips.map(
        (ip) =>
          new Promise<Server>((resolve) => {
            const s = createServer((socket) => {
              dialled.add(ip)
              socket.destroy()
            })
            s.listen(port, ip, () => resolve(s))
          }),
      ),
    )
    const r = new KadDhtRouter(
      { logger: pino({ level: 'silent' }) },
      {
        listen: ['/ip4/127.0.0.1/tcp/0'],
        peerUrl: 'http://127.0.0.1:30021',
        bootstrap: [`dns:many.example:${port}`],
        rebootstrapIntervalMs: 600_000, // one round: the one at start
        resolveHost: async () => ips,
      },
    )
    try {
      await r.start()
      await eventually(async () => expect(dialled.size).toBe(3))
      await new Promise((resolve) => setTimeout(resolve, 1000))
      expect(dialled.size).toBe(3)
    } finally {
      await r.stop()
      for (const s of servers) s.close()
    }
  }, 30_000)
})
