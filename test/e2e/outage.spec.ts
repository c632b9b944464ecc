import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type BuiltImage,
  buildImage,
  type Cluster,
  type ClusterNode,
  pushImage,
  type RegistryHandle,
  startCluster,
  startRegistry,
  tempDir,
  storedDigests,
  waitFor,
} from '../harness/index.js'

/**
 * The headline promise, with separate OS processes: docker-registry, 3 containerd, 3 `kagami run`, a real
 * DHT, hosts.toml written by `kagami configure`. Node A pulls through the registry; the registry stops;
 * B and C still pull, from peers.
 */
describe('e2e: registry outage', () => {
  let registry: RegistryHandle
  let image: BuiltImage
  const nodes: ClusterNode[] = []
  let cluster: Cluster | undefined
  let tmp: { path: string; remove(): Promise<void> }
  let ref: string

  async function blobsMatch(node: ClusterNode, digests: string[]): Promise<void> {
    expect(await storedDigests(node.containerd, digests)).toEqual(digests)
  }

  beforeAll(async () => {
    tmp = await tempDir('e2e')
    registry = await startRegistry()
    image = await buildImage({
      dir: join(tmp.path, 'image'),
      layers: [8_000_000, 3_000_000, 500_000],
      platforms: ['linux/amd64', 'linux/arm64'],
    })
    ref = `${registry.host}/e2e/app:v1`
    await pushImage(image.dir, ref)
    cluster = await startCluster({ names: ['a', 'b', 'c'], registries: [registry.url] })
    nodes.push(...cluster.nodes)
  }, 180_000)

  afterAll(async () => {
    await cluster?.destroy()
    await registry?.destroy()
    await tmp?.remove()
  })

  const amd64 = (): BuiltImage['manifests'][number] =>
    image.manifests.find((m) => m.platform === 'linux/amd64')!
  const pulledDigests = (): string[] => [
    image.root.digest,
    amd64().descriptor.digest,
    amd64().config.digest,
    ...amd64().layers.map((l) => l.digest),
  ]

  it('A pulls through the registry (its mirror misses fast), then advertises the image', async () => {
    const [a] = nodes as [ClusterNode]
    await a.containerd.pull(ref, { hostsDir: a.hostsDir })
    await blobsMatch(a, pulledDigests())
    const s = await waitFor(
      async () => {
        const st = await a.kagami.status()
        return st.advertisedKeys >= pulledDigests().length + 1 ? st : undefined
      },
      { timeoutMs: 15_000, what: 'A advertises the image' },
    )
    expect(s.requests.miss).toBeGreaterThan(0)
  }, 60_000)

  it('with the registry stopped, B pulls by tag and C by digest, from peers; bytes identical', async () => {
    const [, b, c] = nodes as [ClusterNode, ClusterNode, ClusterNode]
    await registry.stop()
    await b.containerd.pull(ref, { hostsDir: b.hostsDir })
    await blobsMatch(b, pulledDigests())
    const byDigest = `${registry.host}/e2e/app@${image.root.digest}`
    await c.containerd.pull(byDigest, { hostsDir: c.hostsDir })
    await blobsMatch(c, pulledDigests())
    expect((await b.kagami.status()).requests.peer).toBeGreaterThan(0)
    expect((await c.kagami.status()).requests.peer).toBeGreaterThan(0)
  }, 120_000)

  it('A’s kagami is killed while C pulls: C completes from B', async () => {
    const [a, b, c] = nodes as [ClusterNode, ClusterNode, ClusterNode]
    await waitFor(async () => (await b.kagami.status()).advertisedKeys >= pulledDigests().length + 1, {
      timeoutMs: 15_000,
      what: 'B advertises the image',
    })
    await c.containerd
      .ctr(['image', 'rm', '--sync', `${registry.host}/e2e/app@${image.root.digest}`])
      .catch(() => undefined)
    const pull = c.containerd.pull(ref, { hostsDir: c.hostsDir })
    a.kagami.kill()
    await pull
    await blobsMatch(c, pulledDigests())
  }, 120_000)

  it('restart containerd on B and kagami on A: both advertise again within 10 s and serve', async () => {
    const [a, b, c] = nodes as [ClusterNode, ClusterNode, ClusterNode]
    await b.containerd.restart()
    await a.kagami.restart()
    const want = pulledDigests().length + 1
    await waitFor(async () => (await a.kagami.status()).advertisedKeys >= want, {
      timeoutMs: 10_000,
      what: 'A re-advertises',
    })
    await waitFor(async () => (await b.kagami.status()).advertisedKeys >= want, {
      timeoutMs: 10_000,
      what: 'B still advertises',
    })
    // C drops the image and pulls it again with the registry still down; B's kagami is stopped so A serves
    await c.containerd.removeImage(ref)
    await b.kagami.stop()
    await c.containerd.pull(ref, { hostsDir: c.hostsDir })
    await blobsMatch(c, pulledDigests())
  }, 120_000)
})
