import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Digest } from '../../src/oci/index.js'
import { RegistryMetrics } from '../../src/registry/metrics.js'
import { createMirror } from '../../src/registry/mirror.js'
import { createPeerServer } from '../../src/registry/peer.js'
import { type TagPolicy, TagResolver } from '../../src/registry/tags.js'
import { digestKey, tagKey } from '../../src/routing/keys.js'
import { memoryNetwork, memoryRouter, type MemoryRouter } from '../../src/routing/memory.js'
import { MemoryStore } from '../../src/store/memory.js'
import { UpstreamClient } from '../../src/upstream/client.js'
import { Endpoints } from '../../src/upstream/endpoints.js'
import {
  type BuiltImage,
  buildImage,
  pushImage,
  type RegistryHandle,
  startRegistry,
  tempDir,
} from '../harness/index.js'
import { advertisedBy, listen, sha } from './fixtures.js'

const ACCEPT = 'application/vnd.oci.image.manifest.v1+json'

/** Puts a built image's blobs in a memory store and tags it `name`. */
async function seed(store: MemoryStore, image: BuiltImage, name: string): Promise<void> {
  for (const [, blob] of image.blobs) store.put(await readFile(blob.path), { mediaType: blob.mediaType })
  store.setImage(name, image.root)
}

const keys = (image: BuiltImage, ref: { registry: string; repository: string; tag: string }) => [
  tagKey(ref),
  ...[...image.blobs.keys()].map((d) => digestKey(d as Digest)),
]

/**
 * The mirror's tag policy over a real docker-registry upstream and a real peer endpoint: which of upstream,
 * the local store and peers decides a tag, for each `--resolve-tags-from-peers` setting.
 */
describe('mirror: tag policy against a real registry', () => {
  let tmp: { path: string; remove(): Promise<void> }
  let registry: RegistryHandle
  let current: BuiltImage // what the registry's tag points to
  let stale: BuiltImage // what the tag pointed to before
  const closers: (() => Promise<void>)[] = []
  let peerUrl: string
  let ref: { registry: string; repository: string; tag: string }

  beforeAll(async () => {
    tmp = await tempDir('tags')
    registry = await startRegistry()
    stale = await buildImage({ dir: join(tmp.path, 'stale'), layers: [1000], seed: 'stale' })
    current = await buildImage({ dir: join(tmp.path, 'current'), layers: [1000], seed: 'current' })
    await pushImage(current.dir, `${registry.host}/team/app:main`)
    ref = { registry: registry.host, repository: 'team/app', tag: 'main' }
    // the peer holds the stale tag and the current content by digest
    const peerStore = new MemoryStore()
    await seed(peerStore, stale, `${registry.host}/team/app:main`)
    await seed(peerStore, current, `${registry.host}/team/app:other`)
    const peer = createPeerServer({
      store: peerStore,
      advertises: advertisedBy(peerStore),
      logger: pino({ level: 'silent' }),
      metrics: new RegistryMetrics(new Registry()),
    })
    peerUrl = await listen(peer)
    closers.push(() => peer.close())
  }, 120_000)

  afterAll(async () => {
    for (const c of closers.reverse()) await c()
    await registry?.destroy()
    await tmp?.remove()
  })

  /** A mirror with the policy; `peerHas` controls what the peer advertises, `local` what this node holds. */
  async function mirror(
    policy: TagPolicy,
    // lookupDelayMs: the peer is found this late (a DHT walk), past the mirror's 100 ms miss deadline
    init: { peerHas: BuiltImage[]; local?: BuiltImage; lookupDelayMs?: number },
  ): Promise<{ url: string; metrics: Registry; close(): Promise<void> }> {
    const network = memoryNetwork()
    const store = new MemoryStore()
    if (init.local !== undefined) await seed(store, init.local, `${registry.host}/team/app:main`)
    const router = memoryRouter(
      { network },
      { id: 'self', url: 'http://127.0.0.1:1', lookupDelayMs: init.lookupDelayMs },
    )
    const other: MemoryRouter = memoryRouter({ network }, { id: 'peer', url: peerUrl })
    await router.start()
    await other.start()
    for (const img of init.peerHas) await other.advertise(keys(img, ref))
    const metrics = new Registry()
    const logger = pino({ level: 'silent' })
    const upstream = new UpstreamClient(
      { endpoints: await Endpoints.load([registry.url]), logger, metrics },
      { tagTimeoutMs: 1500, backoffMs: 5000 },
    )
    const app: FastifyInstance = createMirror(
      {
        store,
        advertises: advertisedBy(store),
        router,
        logger,
        metrics: new RegistryMetrics(metrics),
        tags: new TagResolver({ upstream, logger, metrics }, { policy }),
        upstreamDown: (r) => upstream.isDown(r),
      },
      {
        resolveTimeoutMs: 100,
        outageResolveTimeoutMs: 3000,
        peerHeadersTimeoutMs: 1000,
        bodyIdleTimeoutMs: 1000,
      },
    )
    const url = await listen(app)
    return {
      url,
      metrics,
      close: async () => {
        await app.close()
        upstream.close()
        await other.stop()
        await router.stop()
      },
    }
  }

  async function get(
    url: string,
    method = 'GET',
  ): Promise<{ status: number; digest: string | null; body: Buffer }> {
    const res = await fetch(`${url}/v2/team/app/manifests/main?ns=${encodeURIComponent(registry.host)}`, {
      method,
      headers: { accept: ACCEPT },
      signal: AbortSignal.timeout(10_000),
    })
    return {
      status: res.status,
      digest: res.headers.get('docker-content-digest'),
      body: Buffer.from(await res.arrayBuffer()),
    }
  }

  /** A blob by digest, as containerd asks for it after the manifest. */
  async function getBlob(url: string, digest: string): Promise<{ status: number; body: Buffer }> {
    const res = await fetch(`${url}/v2/team/app/blobs/${digest}?ns=${encodeURIComponent(registry.host)}`, {
      signal: AbortSignal.timeout(10_000),
    })
    return { status: res.status, body: Buffer.from(await res.arrayBuffer()) }
  }

  const layerOf = (image: BuiltImage): string =>
    [...image.blobs.keys()].find((d) => d !== image.root.digest) as string

  async function upstreamCalls(metrics: Registry): Promise<number> {
    const m = await metrics.getSingleMetric('kagami_upstream_tag_requests_total')?.get()
    return (m?.values ?? []).reduce((n, v) => n + v.value, 0)
  }

  it('fallback, registry up: the tag answers with upstream’s digest, bytes from the peer by digest', async () => {
    const m = await mirror('fallback', { peerHas: [stale, current] })
    try {
      const r = await get(m.url)
      expect(r.status).toBe(200)
      expect(r.digest).toBe(current.root.digest)
      expect(sha(r.body)).toBe(current.root.digest)
    } finally {
      await m.close()
    }
  })

  it('fallback, registry up: a local tag pointing elsewhere is stale too; local content by digest serves', async () => {
    const m = await mirror('fallback', { peerHas: [], local: stale })
    try {
      expect(await get(m.url, 'HEAD')).toMatchObject({ status: 404 })
    } finally {
      await m.close()
    }
    const n = await mirror('fallback', { peerHas: [], local: current })
    try {
      expect(await get(n.url, 'HEAD')).toMatchObject({ status: 200, digest: current.root.digest })
    } finally {
      await n.close()
    }
  })

  it('always: upstream is never asked, the peer’s (stale) tag serves', async () => {
    const m = await mirror('always', { peerHas: [stale] })
    try {
      expect(await get(m.url, 'HEAD')).toMatchObject({ status: 200, digest: stale.root.digest })
      expect(await upstreamCalls(m.metrics)).toBe(0)
    } finally {
      await m.close()
    }
  })

  it('registry up: a peer found only after the miss deadline is a 404 (containerd asks the registry)', async () => {
    const m = await mirror('fallback', { peerHas: [current], lookupDelayMs: 400 })
    try {
      expect((await getBlob(m.url, layerOf(current))).status).toBe(404)
    } finally {
      await m.close()
    }
  })

  describe('registry stopped', () => {
    beforeAll(() => registry.stop())
    afterAll(() => registry.start())

    it('a peer found only after the miss deadline serves: a 404 would fail the pull', async () => {
      const m = await mirror('fallback', { peerHas: [stale], lookupDelayMs: 400 })
      try {
        // the tag lookup fails upstream: from then on a miss waits for the DHT
        expect(await get(m.url, 'HEAD')).toMatchObject({ status: 200, digest: stale.root.digest })
        const layer = layerOf(stale)
        const r = await getBlob(m.url, layer)
        expect(r.status).toBe(200)
        expect(sha(r.body)).toBe(layer)
        // what nobody has is still a 404 (the lookup ends when the router has nothing more)
        expect((await getBlob(m.url, `sha256:${'0'.repeat(64)}`)).status).toBe(404)
      } finally {
        await m.close()
      }
    })

    it('fallback: the peer’s tag serves, and the fallback is counted', async () => {
      const m = await mirror('fallback', { peerHas: [stale] })
      try {
        expect(await get(m.url, 'HEAD')).toMatchObject({ status: 200, digest: stale.root.digest })
        const text = await m.metrics.metrics()
        expect(text).toContain(
          `kagami_tag_fallback_total{registry="${registry.host}",reason="unreachable"} 1`,
        )
      } finally {
        await m.close()
      }
    })

    it('never: this node’s own tag serves; a peer’s tag does not', async () => {
      const m = await mirror('never', { peerHas: [stale] })
      try {
        expect(await get(m.url, 'HEAD')).toMatchObject({ status: 404 })
      } finally {
        await m.close()
      }
      const n = await mirror('never', { peerHas: [], local: stale })
      try {
        expect(await get(n.url, 'HEAD')).toMatchObject({ status: 200, digest: stale.root.digest })
      } finally {
        await n.close()
      }
    })
  })
})

// Leak check: every server this file opens (registries, token server, mirrors, stubs) is closed again.
// Counted by listening servers only: keep-alive client pools may hold sockets for a few seconds.
const servers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap').length
let serversBefore = 0
beforeAll(() => {
  serversBefore = servers()
})
afterAll(async () => {
  const deadline = Date.now() + 5_000
  while (servers() > serversBefore && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  expect(servers()).toBe(serversBefore)
})
