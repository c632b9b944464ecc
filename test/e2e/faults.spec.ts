import { createHash } from 'node:crypto'
import { open, readFile } from 'node:fs/promises'
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
  waitFor,
} from '../harness/index.js'

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`
const blobFile = (node: ClusterNode, digest: string): string =>
  join(node.containerd.contentDir, 'blobs', 'sha256', digest.slice(7))

/** HEAD of a manifest by digest through a node's mirror: 200 once some peer advertises it. */
async function mirrorHas(node: ClusterNode, repo: string, digest: string, ns: string): Promise<boolean> {
  const res = await fetch(
    `${node.kagami.mirrorUrl}/v2/${repo}/manifests/${digest}?ns=${encodeURIComponent(ns)}`,
    {
      method: 'HEAD',
      headers: {
        accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json',
      },
      signal: AbortSignal.timeout(5000),
    },
  )
  return res.status === 200
}

/**
 * Black-box trials that failed on earlier builds (issue 19), with real processes: docker-registry, four
 * containerd + `kagami run` nodes, driven through `ctr`, HTTP and the CLI only.
 */
describe('e2e: faults found by black-box trials', () => {
  let registry: RegistryHandle
  let cluster: Cluster | undefined
  let nodes: ClusterNode[] = []
  let tmp: { path: string; remove(): Promise<void> }

  beforeAll(async () => {
    tmp = await tempDir('faults')
    registry = await startRegistry()
    cluster = await startCluster({ names: ['a', 'b', 'c', 'd'], registries: [registry.url] })
    nodes = cluster.nodes
  }, 180_000)

  afterAll(async () => {
    await cluster?.destroy()
    await registry?.destroy()
    await tmp?.remove()
  })

  it('live advertising keeps up with 50 successive pulls on one node', async () => {
    const [a, ...others] = nodes as [ClusterNode, ...ClusterNode[]]
    const images: { ref: string; repo: string; digest: string }[] = []
    for (let i = 0; i < 50; i++) {
      const image = await buildImage({ dir: join(tmp.path, `many-${i}`), layers: [2000], seed: `many-${i}` })
      const repo = `many/app${i}`
      const ref = `${registry.host}/${repo}:v1`
      await pushImage(image.dir, ref)
      images.push({ ref, repo, digest: image.root.digest })
    }
    for (const img of images) {
      await a.containerd.pull(img.ref, { hostsDir: a.hostsDir })
      // each image becomes resolvable from every other node within the live-advertisement deadline
      for (const n of others) {
        // (the 5 s goal is measured in bench/scale; here a loaded CI machine gets slack)
        await waitFor(async () => (await mirrorHas(n, img.repo, img.digest, registry.host)) || undefined, {
          timeoutMs: 15_000,
          what: `${img.ref} resolvable from ${n.name}`,
        })
      }
    }
  }, 300_000)

  describe('one corrupt peer, one good peer', () => {
    let image: BuiltImage
    let ref: string
    let layer: string
    let layerSize: number
    let advertisedByA: number

    beforeAll(async () => {
      const [a, , c] = nodes as [ClusterNode, ClusterNode, ClusterNode]
      image = await buildImage({ dir: join(tmp.path, 'corrupt'), layers: [12_000_000], seed: 'corrupt' })
      ref = `${registry.host}/corrupt/app:v1`
      await pushImage(image.dir, ref)
      await a.containerd.pull(ref, { hostsDir: a.hostsDir })
      await c.containerd.pull(ref, { hostsDir: c.hostsDir })
      const l = image.manifests[0]!.layers[0]!
      layer = l.digest
      layerSize = l.size
      // The herd (#18) leaves a copy on the node elected to fetch upstream for A's pull; this scenario is
      // about B and D holding nothing, so that copy goes.
      for (const n of nodes.filter((x) => x !== a && x !== c))
        await n.containerd.ctr(['content', 'rm', layer]).catch(() => undefined)
      // damage A's copy on disk: one byte flipped in the middle
      const fh = await open(blobFile(a, layer), 'r+')
      const buf = Buffer.alloc(1)
      await fh.read(buf, 0, 1, 6_000_000)
      buf[0] = buf[0]! ^ 0xff
      await fh.write(buf, 0, 1, 6_000_000)
      await fh.close()
      for (const n of [a, c]) {
        await waitFor(async () => (await n.kagami.status()).advertisedKeys >= 4 || undefined, {
          timeoutMs: 15_000,
          what: `${n.name} advertises the image`,
        })
      }
      advertisedByA = (await a.kagami.status()).advertisedKeys
    }, 120_000)

    it('a Range past the end answers 416 through a peer, as it does locally', async () => {
      const [a, b] = nodes as [ClusterNode, ClusterNode]
      const path = `/v2/corrupt/app/blobs/${layer}?ns=${encodeURIComponent(registry.host)}`
      const local = await fetch(`${a.kagami.mirrorUrl}${path}`, { headers: { range: `bytes=${layerSize}-` } })
      expect(local.status).toBe(416)
      const viaPeer = await fetch(`${b.kagami.mirrorUrl}${path}`, {
        headers: { range: `bytes=${layerSize}-` },
      })
      expect(viaPeer.status).toBe(416)
      expect(((await viaPeer.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('RANGE_INVALID')
    })

    it('with the registry down, pulls succeed from the good peer; the corrupt node stops serving its copy', async () => {
      const [a, b, c, d] = nodes as [ClusterNode, ClusterNode, ClusterNode, ClusterNode]
      await registry.stop()
      try {
        // only A (corrupt) can serve B at first: C's kagami is away. The attempt fails (containerd never
        // commits the bad bytes); A is told, re-hashes its copy and stops advertising (so serving) it.
        await c.kagami.stop()
        await b.containerd.pull(ref, { hostsDir: b.hostsDir, timeoutMs: 60_000 }).catch(() => undefined)
        await waitFor(
          async () => (await a.kagami.status()).advertisedKeys === advertisedByA - 1 || undefined,
          {
            timeoutMs: 15_000,
            what: 'A to stop advertising its corrupt copy',
          },
        )
        // C is back: B's next attempt (as the kubelet retries) succeeds, from C, and starts clean
        await c.kagami.restart()
        await waitFor(async () => (await c.kagami.status()).advertisedKeys >= 4 || undefined, {
          timeoutMs: 30_000,
          what: 'C to advertise again',
        })
        await waitFor(async () => (await b.kagami.status()).peers.length >= 3 || undefined, {
          timeoutMs: 30_000,
          what: 'B to see C again',
        })
        // and to hold C's key list again (a subscription takes a moment after a restart)
        const blobAtB = `${b.kagami.mirrorUrl}/v2/corrupt/app/blobs/${layer}?ns=${encodeURIComponent(registry.host)}`
        await waitFor(async () => (await fetch(blobAtB, { method: 'HEAD' })).status === 200 || undefined, {
          timeoutMs: 30_000,
          what: 'B to find the layer at C',
        })
        await b.containerd.pull(ref, { hostsDir: b.hostsDir, timeoutMs: 60_000 })
        expect(sha(await readFile(blobFile(b, layer)))).toBe(layer)
        // a brand-new node pulls at the first attempt
        await d.containerd.pull(ref, { hostsDir: d.hostsDir, timeoutMs: 60_000 })
        expect(sha(await readFile(blobFile(d, layer)))).toBe(layer)
      } finally {
        await registry.start()
      }
    }, 180_000)
  })
})
