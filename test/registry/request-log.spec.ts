import { Writable } from 'node:stream'
import pino from 'pino'
import { Registry } from 'prom-client'
import { afterAll, describe, expect, it } from 'vitest'
import { createMirror } from '../../src/registry/mirror.js'
import { RegistryMetrics } from '../../src/registry/metrics.js'
import { digestKey } from '../../src/routing/keys.js'
import { memoryNetwork, memoryRouter } from '../../src/routing/memory.js'
import { MemoryStore } from '../../src/store/memory.js'
import { advertisedBy, listen, seedImage, startPeer } from './fixtures.js'

/** At the default level (info) an operator sees content fetched from peers, and not the routine misses. */
describe('request log lines at the default level', () => {
  const lines: { level: number; msg: string; source?: string; status?: number }[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l !== '') lines.push(JSON.parse(l) as never)
      cb()
    },
  })
  const closers: (() => Promise<void>)[] = []
  afterAll(async () => {
    for (const c of closers.reverse()) await c()
  })

  it('a blob served by a peer logs one info line with source=peer; a miss and a local hit stay at debug', async () => {
    const network = memoryNetwork()
    const router = memoryRouter({ network }, { id: 'mirror-node', url: 'http://127.0.0.1:1' })
    await router.start()
    closers.push(() => router.stop())
    const store = new MemoryStore()
    const local = seedImage(store, 'docker.io/library/local:v1', 1024)
    const app = createMirror(
      {
        store,
        advertises: advertisedBy(store),
        router,
        logger: pino({ level: 'info' }, sink),
        metrics: new RegistryMetrics(new Registry()),
      },
      { resolveTimeoutMs: 50, peerHeadersTimeoutMs: 400, bodyIdleTimeoutMs: 500, hedgeDelayMs: 60 },
    )
    const url = await listen(app)
    closers.push(() => app.close())
    const peer = await startPeer()
    closers.push(() => peer.close())
    const other = memoryRouter({ network }, { id: 'peer-node', url: peer.url })
    await other.start()
    closers.push(() => other.stop())
    await other.advertise([digestKey(peer.image.layerDigest)])

    const get = async (path: string): Promise<number> => {
      const res = await fetch(`${url}${path}`)
      await res.arrayBuffer()
      return res.status
    }
    expect(await get(`/v2/library/app/blobs/${peer.image.layerDigest}?ns=docker.io`)).toBe(200)
    expect(await get(`/v2/library/local/blobs/${local.layerDigest}?ns=docker.io`)).toBe(200)
    expect(await get(`/v2/library/none/blobs/sha256:${'0'.repeat(64)}?ns=docker.io`)).toBe(404)
    const requests = lines.filter((l) => l.msg === 'request')
    expect(requests).toHaveLength(1)
    expect(requests[0]).toMatchObject({ level: 30, source: 'peer', status: 200 })
  })
})
