/**
 * Memory: RSS of a `kagami run` process (compiled build) idle with ~1,000 advertised keys, and its peak
 * while serving a 1 GiB blob to a peer.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  buildImage,
  pushImage,
  startRegistry,
  tempDir,
  waitFor,
  writeHostsDir,
  type ClusterNode,
  startCluster,
} from '../test/harness/index.js'
import { curl, GiB, log, MiB } from './lib.js'

export interface MemoryBenchResult {
  advertisedKeys: number
  idleSeconds: number
  idleRssMiB: number
  servingPeakRssMiB: number
  servedBytes: number
}

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN) / 1024
}

export async function benchMemory(
  init: { idleSeconds?: number; blobBytes?: number } = {},
): Promise<MemoryBenchResult> {
  const idleSeconds = init.idleSeconds ?? 60
  const cleanup: (() => Promise<void>)[] = []
  try {
    const tmp = await tempDir('bench-memory')
    cleanup.push(() => tmp.remove())
    // 50 platforms × (manifest + config + 18 tiny layers) + index + tag ≈ 1,000 keys
    const platforms = ['linux/amd64', ...Array.from({ length: 49 }, (_, i) => `linux/fake${i}`)]
    const many = await buildImage({
      dir: join(tmp.path, 'many'),
      layers: Array(18).fill(64),
      platforms,
      seed: 'memory',
    })
    const big = await buildImage({
      dir: join(tmp.path, 'big'),
      layers: [(init.blobBytes ?? GiB) - 1536],
      gzip: false,
      seed: 'memory-big',
    })
    const registry = await startRegistry()
    cleanup.push(() => registry.destroy())
    await pushImage(many.dir, `${registry.host}/bench/many:v1`)
    await pushImage(big.dir, `${registry.host}/bench/big:v1`)
    const hosts = join(tmp.path, 'hosts')
    await writeHostsDir(hosts, { registryHost: registry.host })
    const cluster = await startCluster({
      names: ['mem-a', 'mem-b'],
      registries: [registry.url],
      logLevel: 'warn',
      env: { KAGAMI_FROM_DIST: '1' },
    })
    cleanup.push(() => cluster.destroy())
    const [na, nb] = cluster.nodes as [ClusterNode, ClusterNode]
    const ca = na.containerd
    const [a, b] = [na.kagami, nb.kagami]
    log('memory: pulling ~1,000 blobs and a 1 GiB blob into node A')
    await ca.pull(`${registry.host}/bench/many:v1`, {
      hostsDir: hosts,
      allPlatforms: true,
      timeoutMs: 600_000,
    })
    await ca.pull(`${registry.host}/bench/big:v1`, { hostsDir: hosts, timeoutMs: 600_000 })
    const status = await waitFor(
      async () => {
        const s = await a.status()
        return s.advertisedKeys >= 1000 ? s : undefined
      },
      { timeoutMs: 300_000, intervalMs: 500, what: 'A advertises ~1,000 keys' },
    )
    log(`memory: A advertises ${status.advertisedKeys} keys; idle for ${idleSeconds} s`)
    await new Promise((r) => setTimeout(r, idleSeconds * 1000))
    const pid = a.process.child.pid as number
    const idleRssMiB = await rssMiB(pid)
    let peak = idleRssMiB
    const sampler = setInterval(
      () =>
        void rssMiB(pid)
          .then((v) => (peak = Math.max(peak, v)))
          .catch(() => undefined),
      50,
    )
    const layer = big.manifests[0]!.layers[0]!
    const r = await curl(
      `${b.mirrorUrl}/v2/bench/big/blobs/${layer.digest}?ns=${encodeURIComponent(registry.host)}`,
    )
    clearInterval(sampler)
    if (r.status !== 200 || r.bytes !== layer.size)
      throw new Error(`serving the blob failed: ${r.status} ${r.bytes}`)
    log(
      `memory: idle RSS ${idleRssMiB.toFixed(1)} MiB, peak while serving ${(r.bytes / MiB).toFixed(0)} MiB: ${peak.toFixed(1)} MiB`,
    )
    return {
      advertisedKeys: status.advertisedKeys,
      idleSeconds,
      idleRssMiB,
      servingPeakRssMiB: peak,
      servedBytes: r.bytes,
    }
  } finally {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(
    JSON.stringify(await benchMemory({ idleSeconds: Number(process.env.IDLE_SECONDS ?? 60) }), null, 2),
  )
}
