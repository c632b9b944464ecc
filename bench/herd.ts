/**
 * Herd: N nodes pull the same new image at once. Reports upstream bytes (counted at a proxy in front of the
 * registry) divided by the image size. Every node runs containerd + kagami with the mirror first.
 */
import { join } from 'node:path'
import { buildImage, pushImage, startCluster, startRegistry, tempDir } from '../test/harness/index.js'
import { log, MiB } from './lib.js'
import { startProxy } from './proxy.js'

export interface HerdBenchResult {
  nodes: number
  imageBytes: number
  upstreamBytes: number
  upstreamRatio: number
  seconds: number
}

export async function benchHerd(
  init: { nodes?: number; layerBytes?: number } = {},
): Promise<HerdBenchResult> {
  const n = init.nodes ?? 5
  const cleanup: (() => Promise<void>)[] = []
  try {
    const tmp = await tempDir('bench-herd')
    cleanup.push(() => tmp.remove())
    const image = await buildImage({
      dir: join(tmp.path, 'img'),
      layers: Array(4).fill(init.layerBytes ?? 16 * MiB),
      seed: 'herd',
    })
    const imageBytes = [...image.blobs.values()].reduce((s, b) => s + b.sizeBytes, 0)
    const registry = await startRegistry()
    cleanup.push(() => registry.destroy())
    const ref = `${registry.host}/bench/herd:v1`
    await pushImage(image.dir, ref)
    const [h, p] = registry.host.split(':') as [string, string]
    const upstream = await startProxy({ target: { host: h, port: Number(p) } })
    cleanup.push(() => upstream.close())
    // the upstream every node's hosts.toml names is the counting proxy
    const cluster = await startCluster({
      names: Array.from({ length: n }, (_, i) => `herd-${i}`),
      registries: [upstream.url],
      logLevel: 'warn',
      env: { KAGAMI_FROM_DIST: '1' },
      minPeers: Math.min(n - 1, 2),
    })
    cleanup.push(() => cluster.destroy())
    const nodes = cluster.nodes
    upstream.reset()
    log(`herd: ${n} nodes pull ${(imageBytes / MiB).toFixed(0)} MiB at once`)
    const t0 = performance.now()
    const proxyRef = `${upstream.host}/bench/herd:v1`
    await Promise.all(
      nodes.map((node) => node.containerd.pull(proxyRef, { hostsDir: node.hostsDir, timeoutMs: 600_000 })),
    )
    const seconds = (performance.now() - t0) / 1000
    const upstreamBytes = upstream.bytesToClients()
    log(
      `herd: upstream served ${(upstreamBytes / MiB).toFixed(1)} MiB = ${(upstreamBytes / imageBytes).toFixed(2)}× the image in ${seconds.toFixed(1)} s`,
    )
    return { nodes: n, imageBytes, upstreamBytes, upstreamRatio: upstreamBytes / imageBytes, seconds }
  } finally {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(JSON.stringify(await benchHerd({ nodes: Number(process.env.NODES ?? 5) }), null, 2))
}
