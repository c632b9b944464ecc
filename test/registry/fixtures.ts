import { createHash } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import { Registry } from 'prom-client'
import { type Digest, MediaType } from '../../src/oci/index.js'
import { createMirror, type MirrorInit } from '../../src/registry/mirror.js'
import { RegistryMetrics } from '../../src/registry/metrics.js'
import type { Advertises } from '../../src/registry/local.js'
import { createPeerServer } from '../../src/registry/peer.js'
import { digestKey, tagKey } from '../../src/routing/keys.js'
import {
  type MemoryNetwork,
  memoryNetwork,
  memoryRouter,
  type MemoryRouter,
} from '../../src/routing/memory.js'
import { MemoryStore } from '../../src/store/memory.js'

export const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

export interface TestImage {
  name: string
  manifest: Buffer
  manifestDigest: Digest
  config: Buffer
  configDigest: Digest
  layer: Buffer
  layerDigest: Digest
}

/** A single-platform image held in a memory store. */
export function seedImage(
  store: MemoryStore,
  name = 'docker.io/library/app:v1',
  layerBytes = 2 * 1024 * 1024,
): TestImage {
  const layer = Buffer.alloc(layerBytes)
  for (let i = 0; i + 4 <= layer.length; i += 4) layer.writeUInt32LE((i * 2654435761) >>> 0, i)
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }),
  )
  const layerDigest = store.put(layer, { mediaType: MediaType.ociLayerGzip })
  const configDigest = store.put(config, { mediaType: MediaType.ociConfig })
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: { mediaType: MediaType.ociConfig, digest: configDigest, size: config.length },
      layers: [{ mediaType: MediaType.ociLayerGzip, digest: layerDigest, size: layer.length }],
    }),
  )
  const manifestDigest = store.put(manifest, { mediaType: MediaType.ociManifest })
  store.setImage(name, { mediaType: MediaType.ociManifest, digest: manifestDigest, size: manifest.length })
  return { name, manifest, manifestDigest, config, configDigest, layer, layerDigest }
}

/** What a node holding `store` advertises, as state sync would: every image's tag and every blob it holds. */
export function advertisedBy(store: MemoryStore): Advertises {
  return (key) =>
    key.kind === 'digest'
      ? store.holds(key.digest)
      : store.hasImage(`${key.registry}/${key.repository}:${key.tag}`)
}

export async function listen(app: FastifyInstance | Server): Promise<string> {
  if ('inject' in app) return await app.listen({ host: '127.0.0.1', port: 0 })
  await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve))
  return `http://127.0.0.1:${(app.address() as AddressInfo).port}`
}

/** A node:http peer that misbehaves on purpose; tracks sockets so close() never hangs. */
export async function misbehavingPeer(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ url: string; hits: () => number; close(): Promise<void> }> {
  const sockets = new Set<Socket>()
  let hits = 0
  const server = createServer((req, res) => {
    hits++
    handler(req, res)
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  const url = await listen(server)
  return {
    url,
    hits: () => hits,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

export interface MirrorNode {
  url: string
  store: MemoryStore
  router: MemoryRouter
  network: MemoryNetwork
  metrics: Registry
  app: FastifyInstance
  /** Advertise the image's keys from another "node" whose peer endpoint is `url`. */
  provide(id: string, url: string, image: TestImage): Promise<MemoryRouter>
  close(): Promise<void>
}

export async function startMirror(init: Partial<MirrorInit> = {}): Promise<MirrorNode> {
  const network = memoryNetwork()
  const store = new MemoryStore()
  const router = memoryRouter({ network }, { id: 'mirror-node', url: 'http://127.0.0.1:1' })
  await router.start()
  const metrics = new Registry()
  const app = createMirror(
    {
      store,
      advertises: advertisedBy(store),
      router,
      logger: pino({ level: process.env.KAGAMI_TEST_LOG ?? 'silent' }),
      metrics: new RegistryMetrics(metrics),
    },
    { resolveTimeoutMs: 50, peerHeadersTimeoutMs: 400, bodyIdleTimeoutMs: 500, hedgeDelayMs: 60, ...init },
  )
  const url = await listen(app)
  const others: MemoryRouter[] = []
  return {
    url,
    store,
    router,
    network,
    metrics,
    app,
    async provide(id, peerUrl, image) {
      const r = memoryRouter({ network }, { id, url: peerUrl })
      await r.start()
      const ref = {
        registry: 'docker.io',
        repository: image.name.split('/').slice(1).join('/').split(':')[0] as string,
        tag: 'v1',
      }
      await r.advertise([
        tagKey(ref),
        digestKey(image.manifestDigest),
        digestKey(image.configDigest),
        digestKey(image.layerDigest),
      ])
      others.push(r)
      return r
    },
    async close() {
      await app.close()
      for (const r of others) await r.stop()
      await router.stop()
    },
  }
}

/** A real peer endpoint (createPeerServer) over a memory store holding one image. */
export async function startPeer(
  image?: (store: MemoryStore) => TestImage,
): Promise<{ url: string; image: TestImage; store: MemoryStore; close(): Promise<void> }> {
  const store = new MemoryStore()
  const img = (image ?? ((s) => seedImage(s)))(store)
  const app = createPeerServer({
    store,
    advertises: advertisedBy(store),
    logger: pino({ level: 'silent' }),
    metrics: new RegistryMetrics(new Registry()),
  })
  const url = await listen(app)
  return { url, image: img, store, close: () => app.close() }
}
