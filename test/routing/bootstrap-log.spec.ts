import { Writable } from 'node:stream'
import pino from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { KadDhtRouter } from '../../src/routing/kad-dht.js'
import { eventually, freePort } from '../harness/index.js'

/**
 * A bootstrap name that does not resolve (e.g. a wrong clusterDomain) leaves the node alone while it reports
 * ready; at the default level the operator must see it, once, and see it recover — not a line every round.
 */
describe('bootstrap DNS name that fails: one warn per change of state', () => {
  const lines: { level: number; msg: string; name?: string }[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l !== '') lines.push(JSON.parse(l) as never)
      cb()
    },
  })
  let resolves = false
  let lookups = 0
  let router: KadDhtRouter | undefined

  afterAll(async () => {
    await router?.stop()
  })

  it('warns once while it fails, logs once when it resolves again', async () => {
    const port = await freePort()
    router = new KadDhtRouter(
      { logger: pino({ level: 'info' }, sink) },
      {
        listen: [`/ip4/127.0.0.1/tcp/${port}`],
        peerUrl: 'http://127.0.0.1:29021',
        bootstrap: [`dns:kagami-bootstrap.kagami.svc.wrong.domain:${port}`],
        rebootstrapIntervalMs: 50,
        resolveHost: async (host) => {
          lookups++
          if (!resolves)
            throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' })
          return ['127.0.0.1']
        },
      },
    )
    await router.start()
    await eventually(async () => expect(lookups).toBeGreaterThanOrEqual(5))
    const warns = lines.filter((l) => l.msg === 'bootstrap name does not resolve')
    expect(warns).toHaveLength(1)
    expect(warns[0]).toMatchObject({ level: 40, name: 'kagami-bootstrap.kagami.svc.wrong.domain' })
    resolves = true
    const seen = lookups
    await eventually(async () => expect(lookups).toBeGreaterThanOrEqual(seen + 3))
    expect(lines.filter((l) => l.msg === 'bootstrap name resolves again')).toHaveLength(1)
    expect(lines.filter((l) => l.msg === 'bootstrap name does not resolve')).toHaveLength(1)
  })
})
