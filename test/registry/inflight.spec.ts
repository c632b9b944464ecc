import pino from 'pino'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Digest } from '../../src/oci/index.js'
import { InFlight } from '../../src/registry/inflight.js'
import { RegistryMetrics } from '../../src/registry/metrics.js'
import { createPeerServer } from '../../src/registry/peer.js'
import { digestKey } from '../../src/routing/keys.js'
import { memoryRouter, type MemoryRouter } from '../../src/routing/memory.js'
import { MemoryStore } from '../../src/store/memory.js'
import { eventually } from '../harness/process.js'
import { advertisedBy, listen, type MirrorNode, sha, startMirror } from './fixtures.js'

const logger = pino({ level: process.env.KAGAMI_TEST_LOG ?? 'silent' })

function blob(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes)
  for (let i = 0; i + 4 <= b.length; i += 4) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i)
  return b
}

async function holders(router: MemoryRouter, digest: Digest): Promise<string[]> {
  const out: string[] = []
  for await (const p of router.resolve(digestKey(digest), { signal: AbortSignal.timeout(1000) }))
    out.push(p.id)
  return out
}

/** Node A: a memory store with downloads, its in-flight marks, and a real peer endpoint serving them. */
async function startDownloader(node: MirrorNode, advertised: Set<string>) {
  const store = new MemoryStore()
  // the endpoint first (the router announces its URL), reading the marks built right after it
  const built: { inflight?: InFlight } = {}
  const app = createPeerServer({
    store,
    advertises: (k) => advertisedBy(store)(k) || (built.inflight?.advertises(k) ?? false),
    logger,
    metrics: new RegistryMetrics(new Registry()),
    inflight: { ingest: (d) => built.inflight?.ingest(d), idleTimeoutMs: 300 },
  })
  const peerUrl = await listen(app)
  const router = memoryRouter({ network: node.network }, { id: 'downloader', url: peerUrl })
  await router.start()
  const marks = new InFlight(
    { store, router, advertised: (k) => k.kind === 'digest' && advertised.has(k.digest), logger },
    { pollIntervalMs: 20, stallMs: 400 },
  )
  built.inflight = marks
  return {
    store,
    router,
    inflight: marks,
    close: async () => {
      await marks.stop()
      await app.close()
      await router.stop()
    },
  }
}

describe('in-flight downloads', () => {
  let node: MirrorNode
  let a: Awaited<ReturnType<typeof startDownloader>>
  const advertised = new Set<string>()
  beforeAll(async () => {
    node = await startMirror({ bodyIdleTimeoutMs: 1000, peerHeadersTimeoutMs: 1000 })
    a = await startDownloader(node, advertised)
  })
  afterAll(async () => {
    await a.close()
    await node.close()
  })

  it('a download the mirror expected is advertised while it runs and withdrawn when it is aborted', async () => {
    const bytes = blob(64 * 1024, 1)
    const digest = sha(bytes) as Digest
    a.inflight.expect(digest)
    expect(await holders(node.router, digest)).toEqual([])
    a.store.startIngest({
      ref: `layer-${digest}`,
      expected: digest,
      offsetBytes: 0,
      totalBytes: bytes.length,
    })
    await eventually(async () => expect(await holders(node.router, digest)).toEqual(['downloader']))
    expect(a.inflight.ingest(digest)?.ref).toBe(`layer-${digest}`)
    await a.store.abortIngest(`layer-${digest}`)
    await eventually(async () => expect(await holders(node.router, digest)).toEqual([]))
    expect(a.inflight.advertises(digestKey(digest))).toBe(false)
  })

  it('a download that stopped growing is not served: nodes that followed a dead source do not feed each other', async () => {
    const bytes = blob(64 * 1024, 7)
    const digest = sha(bytes) as Digest
    const ref = `layer-${digest}`
    a.inflight.expect(digest)
    a.store.startIngest({ ref, expected: digest, offsetBytes: 0, totalBytes: bytes.length })
    a.store.writeIngest(ref, bytes.subarray(0, 1024))
    await eventually(async () => expect(a.inflight.ingest(digest)).toBeDefined())
    await eventually(async () => expect(a.inflight.ingest(digest)).toBeUndefined())
    a.store.writeIngest(ref, bytes.subarray(1024, 2048)) // growing again: served again
    await eventually(async () => expect(a.inflight.ingest(digest)).toBeDefined())
    await a.store.abortIngest(ref)
  })

  it('a download nobody asked the mirror for is never advertised', async () => {
    const bytes = blob(1024, 2)
    const digest = sha(bytes) as Digest
    a.store.startIngest({
      ref: `layer-${digest}`,
      expected: digest,
      offsetBytes: 0,
      totalBytes: bytes.length,
    })
    a.inflight.expect(sha(blob(1024, 3)) as Digest) // something else: polling runs
    await new Promise((r) => setTimeout(r, 200))
    expect(await holders(node.router, digest)).toEqual([])
    await a.store.abortIngest(`layer-${digest}`)
  })

  it('a committed download stays advertised until its image is, then the mark leaves without a withdraw', async () => {
    const bytes = blob(32 * 1024, 4)
    const digest = sha(bytes) as Digest
    a.inflight.expect(digest)
    a.store.startIngest({
      ref: `layer-${digest}`,
      expected: digest,
      offsetBytes: 0,
      totalBytes: bytes.length,
    })
    await eventually(async () => expect(await holders(node.router, digest)).toEqual(['downloader']))
    a.store.writeIngest(`layer-${digest}`, bytes)
    a.store.commitIngest(`layer-${digest}`)
    await eventually(async () => expect(a.inflight.ingest(digest)).toBeUndefined())
    expect(a.inflight.advertises(digestKey(digest))).toBe(true)
    expect(await holders(node.router, digest)).toEqual(['downloader'])
    advertised.add(digest) // state sync now advertises it with its image
    await eventually(async () => expect(a.inflight.advertises(digestKey(digest))).toBe(false))
    expect(await holders(node.router, digest)).toEqual(['downloader'])
  })

  it('a peer fetches a blob while it arrives: byte-identical, verified at the end', async () => {
    const bytes = blob(6 * 1024 * 1024, 5)
    const digest = sha(bytes) as Digest
    const ref = `layer-${digest}`
    a.inflight.expect(digest)
    a.store.startIngest({ ref, expected: digest, offsetBytes: 0, totalBytes: bytes.length })
    a.store.writeIngest(ref, bytes.subarray(0, 1024 * 1024))
    await eventually(async () => expect(await holders(node.router, digest)).toEqual(['downloader']))
    // the rest arrives in pieces while the peer streams it
    const writer = (async () => {
      for (let off = 1024 * 1024; off < bytes.length; off += 512 * 1024) {
        await new Promise((r) => setTimeout(r, 30))
        a.store.writeIngest(ref, bytes.subarray(off, off + 512 * 1024))
      }
    })()
    const res = await fetch(`${node.url}/v2/library/app/blobs/${digest}?ns=docker.io`, {
      signal: AbortSignal.timeout(20_000),
    })
    expect(res.status).toBe(200)
    const got = Buffer.from(await res.arrayBuffer())
    await writer
    expect(got.length).toBe(bytes.length)
    expect(sha(got)).toBe(digest)
    a.store.commitIngest(ref)
  })

  it('an in-flight download that stalls ends the body short (no hang), and a wrong one never completes', async () => {
    const bytes = blob(2 * 1024 * 1024, 6)
    const digest = sha(bytes) as Digest
    const ref = `layer-${digest}`
    a.inflight.expect(digest)
    a.store.startIngest({ ref, expected: digest, offsetBytes: 0, totalBytes: bytes.length })
    a.store.writeIngest(ref, bytes.subarray(0, 1024 * 1024))
    await eventually(async () => expect(await holders(node.router, digest)).toEqual(['downloader']))
    // a short body, or (a loaded machine past the header deadline) an error status: never a hang, never
    // a complete body
    const stalled = await fetch(`${node.url}/v2/library/app/blobs/${digest}?ns=docker.io`, {
      signal: AbortSignal.timeout(20_000),
    })
      .then(async (r) => (r.status === 200 ? Buffer.from(await r.arrayBuffer()) : r.status))
      .catch((err: Error) => err)
    expect(stalled instanceof Error || typeof stalled === 'number').toBe(true)
    // corrupt bytes arriving in flight: the fetching side's digest check cuts the body
    const wrong = Buffer.from(bytes)
    wrong.writeUInt8((wrong.readUInt8(wrong.length - 10) ^ 0xff) & 0xff, wrong.length - 10)
    a.store.writeIngest(ref, wrong.subarray(1024 * 1024))
    const corrupt = fetch(`${node.url}/v2/library/app/blobs/${digest}?ns=docker.io`, {
      signal: AbortSignal.timeout(20_000),
    }).then(async (r) => (r.status === 200 ? Buffer.from(await r.arrayBuffer()) : r.status))
    const outcome = await corrupt.catch((err: Error) => err)
    expect(outcome instanceof Error || typeof outcome === 'number').toBe(true)
    await a.store.abortIngest(ref)
  })
})
