/**
 * Memory: RSS of a `kagami run` process (compiled build) idle with ~1,000 advertised keys, its peak while
 * serving a 1 GiB blob to a peer, and the peaks of both nodes while 16 clients download a 256 MiB blob at
 * once through node B's mirror (node A serves them all, node B relays and verifies them all).
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
  /** 16 parallel downloads of a 256 MiB blob through B's mirror: peak RSS of A (serving) and B (relaying). */
  parallel?: {
    downloads: number
    blobBytes: number
    servingPeakRssMiB: number
    relayingPeakRssMiB: number
    seconds: number
  }
}

/** Samples the RSS of `pids` every 50 ms until stopped; returns the peak of each. */
function peakSampler(pids: number[]): { stop(): Promise<number[]> } {
  const peaks = pids.map(() => 0)
  const sample = async (): Promise<void> => {
    await Promise.all(
      pids.map(async (pid, i) => {
        peaks[i] = Math.max(peaks[i] as number, await rssMiB(pid).catch(() => 0))
      }),
    )
  }
  const timer = setInterval(() => void sample(), 50)
  return {
    async stop() {
      clearInterval(timer)
      await sample()
      return peaks
    },
  }
}

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN) / 1024
}

export async function benchMemory(
  init: { idleSeconds?: number; blobBytes?: number; parallel?: number; parallelBlobBytes?: number } = {},
): Promise<MemoryBenchResult> {
  const parallel = init.parallel ?? 16
  const parallelBlobBytes = init.parallelBlobBytes ?? 256 * MiB
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
    const mid = await buildImage({
      dir: join(tmp.path, 'mid'),
      layers: [parallelBlobBytes - 1536],
      gzip: false,
      seed: 'memory-mid',
    })
    const registry = await startRegistry()
    cleanup.push(() => registry.destroy())
    await pushImage(many.dir, `${registry.host}/bench/many:v1`, { timeoutMs: 900_000 })
    await pushImage(big.dir, `${registry.host}/bench/big:v1`)
    await pushImage(mid.dir, `${registry.host}/bench/mid:v1`)
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
    await ca.pull(`${registry.host}/bench/mid:v1`, { hostsDir: hosts, timeoutMs: 600_000 })
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

    // 16 clients at once through B's mirror: every body is relayed and verified by B, served by A
    const midLayer = mid.manifests[0]!.layers[0]!
    const bPid = b.process.child.pid as number
    const peaks = peakSampler([pid, bPid])
    const t0 = performance.now()
    const all = await Promise.all(
      Array.from({ length: parallel }, () =>
        curl(
          `${b.mirrorUrl}/v2/bench/mid/blobs/${midLayer.digest}?ns=${encodeURIComponent(registry.host)}`,
          [],
          600,
        ),
      ),
    )
    const seconds = (performance.now() - t0) / 1000
    const [servingPeak, relayingPeak] = (await peaks.stop()) as [number, number]
    for (const x of all) {
      if (x.status !== 200 || x.bytes !== midLayer.size)
        throw new Error(`parallel download failed: ${x.status} ${x.bytes}`)
    }
    log(
      `memory: ${parallel} parallel ${(midLayer.size / MiB).toFixed(0)} MiB downloads in ${seconds.toFixed(1)} s: peak RSS serving (A) ${servingPeak.toFixed(1)} MiB, relaying (B) ${relayingPeak.toFixed(1)} MiB`,
    )
    return {
      parallel: {
        downloads: parallel,
        blobBytes: midLayer.size,
        servingPeakRssMiB: servingPeak,
        relayingPeakRssMiB: relayingPeak,
        seconds,
      },
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
