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
 * Striping end to end: docker-registry, 4 containerd and 4 `kagami run` processes with a low
 * `--stripe-threshold`. A, B and C pull the image from the registry; the registry stops; D pulls it with
 * `ctr` and its big layer comes as stripes from the three of them (after its first bytes from one). The bytes in D's content store are
 * checked by sha256, and D's metrics show the stripes.
 */
describe('e2e: a big layer striped over three peers', () => {
  let registry: RegistryHandle
  let image: BuiltImage
  let cluster: Cluster | undefined
  let tmp: { path: string; remove(): Promise<void> }
  let ref: string

  beforeAll(async () => {
    tmp = await tempDir('e2e-stripe')
    registry = await startRegistry()
    image = await buildImage({ dir: join(tmp.path, 'image'), layers: [24_000_000, 400_000], seed: 'stripe' })
    ref = `${registry.host}/e2e/striped:v1`
    await pushImage(image.dir, ref)
    cluster = await startCluster({
      names: ['a', 'b', 'c', 'd'],
      registries: [registry.url],
      // herd off: otherwise D may be the node elected to fetch the layer for A, B or C's pull, and would
      // hold it before its own pull
      env: { KAGAMI_HERD: 'false' },
      // layers of 4 MiB and more are striped (the default 64 MiB would need big layers), in 4 MiB stripes,
      // however fast one peer is on loopback (by default a peer sending ≥ 256 MiB/s keeps the blob)
      // (and a lookup budget that a loaded test machine cannot miss: a miss would take the herd's path,
      // which never stripes)
      extraArgs: () => [
        '--stripe-threshold',
        '4MiB',
        '--stripe-below-rate',
        '1000GiB',
        '--resolve-timeout',
        '1s',
      ],
    })
  }, 240_000)

  afterAll(async () => {
    await cluster?.destroy()
    await registry?.destroy()
    await tmp?.remove()
  })

  /** Body bytes a node's peer endpoint has served to other nodes. */
  const peerBytes = async (n: ClusterNode): Promise<number> => {
    const text = await (await fetch(`${n.kagami.mirrorUrl}/metrics`)).text()
    const lines = text.match(/^kagami_bytes_served_total\{server="peer"[^}]*\} \S+$/gm) ?? []
    return lines.reduce((sum, l) => sum + Number(l.split(' ').at(-1)), 0)
  }

  const digests = (): string[] => {
    const m = image.manifests[0]!
    return [m.descriptor.digest, m.config.digest, ...m.layers.map((l) => l.digest)]
  }

  it('D pulls with the registry stopped: the big layer comes striped from A, B and C, bytes identical', async () => {
    const [a, b, c, d] = cluster!.nodes as [ClusterNode, ClusterNode, ClusterNode, ClusterNode]
    for (const n of [a, b, c]) await n.containerd.pull(ref, { hostsDir: n.hostsDir })
    const big = image.manifests[0]!.layers[0]!.digest
    // D knows all three hold the big layer before the registry goes away
    await waitFor(
      async () => {
        const res = await fetch(`${d.kagami.mirrorUrl}/status/holders?q=${encodeURIComponent(big)}`)
        const h = (await res.json()) as { holders: unknown[] }
        return h.holders.length >= 3 || undefined
      },
      { timeoutMs: 30_000, what: 'D to see three holders of the big layer' },
    )
    await registry.stop()
    const before = await Promise.all([a, b, c].map(peerBytes))
    await d.containerd.pull(ref, { hostsDir: d.hostsDir })
    expect(await storedDigests(d.containerd, digests())).toEqual(digests())
    const metrics = await (await fetch(`${d.kagami.mirrorUrl}/metrics`)).text()
    const value = (line: string): number =>
      Number(new RegExp(`^${line.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(metrics)?.[1] ?? 0)
    expect(value('kagami_striped_blobs_total{result="started"}')).toBeGreaterThanOrEqual(1)
    expect(value('kagami_striped_blobs_total{result="failed"}')).toBe(0)
    // 24 MB: the first two 1 MiB windows (+ a socket read each) from one peer, the rest in 4 MiB stripes
    const stripes =
      value('kagami_stripes_total{result="fetched"}') + value('kagami_stripes_total{result="refetched"}')
    expect(stripes).toBeGreaterThanOrEqual(3)
    // and more than one holder served them: blob bytes each peer endpoint sent during D's pull
    const after = await Promise.all([a, b, c].map(peerBytes))
    const served = after.map((n, i) => n - (before[i] as number))
    expect(served.filter((bytes) => bytes > 0).length, served.join(',')).toBeGreaterThanOrEqual(2)
  }, 180_000)
})
