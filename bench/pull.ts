/**
 * Image pulls with real containerd (`ctr image pull`, 5 layers, ~200 MiB): straight from the registry vs via
 * a peer, on loopback and with the registry behind an emulated WAN (~20 ms RTT, ~100 Mbit/s).
 */
import { join } from 'node:path'
import {
  buildImage,
  pushImage,
  startRegistry,
  tempDir,
  waitFor,
  writeHostsDir,
  type ContainerdHandle,
  type ClusterNode,
  startCluster,
} from '../test/harness/index.js'
import { log, median, MiB, stats, treeCpuSeconds, type Stats } from './lib.js'
import { ratioStats, type RatioStats } from './mirror.js'
import { startProxy } from './proxy.js'

export interface PullBenchResult {
  imageBytes: number
  runs: number
  /** Medians. */
  seconds: { registry: number; peer: number; wanRegistry: number; wanPeer: number }
  ratios: { peerVsRegistry: number; wanSpeedup: number }
  /** Each loopback run's pull time (s), registry and peer pulls interleaved. */
  samples?: { registry: number[]; peer: number[] }
  /** min/median/max of each side, and of the ratio taken run by run (peer / registry of the same run). */
  spread?: { registry: Stats; peer: Stats; peerVsRegistry: RatioStats }
  /**
   * Medians of the CPU (core-seconds) every process of the run used during one loopback pull: containerd,
   * the registry, and on the peer path both kagami nodes. On this 2-core machine the peer path's extra CPU
   * is extra wall time; on a cluster the serving node's share is another machine's.
   */
  cpuSeconds?: { registry: number; peer: number }
}

async function timedPull(
  c: ContainerdHandle,
  ref: string,
  hostsDir: string,
  cpu?: number[],
): Promise<number> {
  const cpu0 = await treeCpuSeconds()
  const t0 = performance.now()
  await c.pull(ref, { hostsDir, timeoutMs: 600_000 })
  const s = (performance.now() - t0) / 1000
  cpu?.push((await treeCpuSeconds()) - cpu0)
  await c.removeImage(ref) // --sync: content is garbage-collected, so the next pull starts cold
  return s
}

export async function benchPull(
  init: { layerBytes?: number; runs?: number; wanRateBytesPerSecond?: number; wanDelayMs?: number } = {},
): Promise<PullBenchResult> {
  const layerBytes = init.layerBytes ?? 40 * MiB
  // pull times on this shared machine vary by ±30 % run to run: enough runs for a min/median/max
  const runs = init.runs ?? 5
  const cleanup: (() => Promise<void>)[] = []
  try {
    const tmp = await tempDir('bench-pull')
    cleanup.push(() => tmp.remove())
    const image = await buildImage({
      dir: join(tmp.path, 'img'),
      layers: Array(5).fill(layerBytes),
      seed: 'pull',
    })
    const imageBytes = [...image.blobs.values()].reduce((n, b) => n + b.sizeBytes, 0)
    log(`pull: image of ${(imageBytes / MiB).toFixed(0)} MiB in 5 layers`)
    const registry = await startRegistry()
    cleanup.push(() => registry.destroy())
    const ref = `${registry.host}/bench/pull:v1`
    await pushImage(image.dir, ref)
    const [regHost, regPort] = registry.host.split(':') as [string, string]
    const wan = await startProxy({
      target: { host: regHost, port: Number(regPort) },
      rateBytesPerSecond: init.wanRateBytesPerSecond ?? 12.5e6,
      delayMs: init.wanDelayMs ?? 10,
    })
    cleanup.push(() => wan.close())

    const cluster = await startCluster({
      names: ['pull-a', 'pull-b'],
      registries: [registry.url],
      logLevel: process.env.KAGAMI_BENCH_LOG_LEVEL ?? 'warn',
      env: { KAGAMI_FROM_DIST: '1' },
    })
    cleanup.push(() => cluster.destroy())
    const [na, nb] = cluster.nodes as [ClusterNode, ClusterNode]
    const [ca, cb] = [na.containerd, nb.containerd]
    const [a, b] = [na.kagami, nb.kagami]
    await waitFor(async () => ((await b.status()).peers.length >= 1 ? true : undefined), {
      timeoutMs: 30_000,
      what: 'B sees A',
    })

    // Plain: B without kagami in hosts.toml, straight from the registry (or the WAN proxy).
    const direct = join(tmp.path, 'direct')
    await writeHostsDir(direct, { registryHost: registry.host })
    const directWan = join(tmp.path, 'direct-wan')
    await writeHostsDir(directWan, { registryHost: registry.host, server: wan.url })
    // Via kagami: B's hosts.toml from `kagami configure` (the mirror first, the registry as server).
    const viaPeer = nb.hostsDir
    const aHosts = join(tmp.path, 'a-hosts')
    await writeHostsDir(aHosts, { registryHost: registry.host })
    await ca.pull(ref, { hostsDir: aHosts, timeoutMs: 600_000 })
    await waitFor(async () => ((await a.status()).advertisedKeys >= 8 ? true : undefined), {
      timeoutMs: 30_000,
      what: 'A advertises',
    })

    const t = {
      registry: [] as number[],
      peer: [] as number[],
      wanRegistry: [] as number[],
      wanPeer: [] as number[],
    }
    const cpu = { registry: [] as number[], peer: [] as number[] }
    for (let i = 0; i < runs; i++) {
      t.registry.push(await timedPull(cb, ref, direct, cpu.registry))
      t.peer.push(await timedPull(cb, ref, viaPeer, cpu.peer))
      log(
        `pull: run ${i + 1}: registry ${t.registry.at(-1)!.toFixed(2)} s (${cpu.registry.at(-1)!.toFixed(2)} core-s), via peer ${t.peer.at(-1)!.toFixed(2)} s (${cpu.peer.at(-1)!.toFixed(2)} core-s)`,
      )
    }
    // WAN: one run each (a 200 MiB pull over 100 Mbit/s takes ~17 s)
    t.wanRegistry.push(await timedPull(cb, ref, directWan))
    // the peer path with the WAN registry as fall-back server: peers serve everything, the WAN is not used
    const viaPeerWan = join(tmp.path, 'via-peer-wan')
    await writeHostsDir(viaPeerWan, { registryHost: registry.host, mirrorUrl: b.mirrorUrl, server: wan.url })
    wan.reset()
    t.wanPeer.push(await timedPull(cb, ref, viaPeerWan))
    log(
      `pull: WAN registry ${t.wanRegistry[0]!.toFixed(2)} s, via peer ${t.wanPeer[0]!.toFixed(2)} s (${wan.bytesToClients()} bytes over the WAN)`,
    )
    const s = {
      registry: median(t.registry),
      peer: median(t.peer),
      wanRegistry: median(t.wanRegistry),
      wanPeer: median(t.wanPeer),
    }
    return {
      imageBytes,
      runs,
      seconds: s,
      ratios: { peerVsRegistry: s.peer / s.registry, wanSpeedup: s.wanRegistry / s.wanPeer },
      samples: { registry: t.registry, peer: t.peer },
      spread: {
        registry: stats(t.registry),
        peer: stats(t.peer),
        peerVsRegistry: ratioStats(t.peer, t.registry),
      },
      cpuSeconds: { registry: median(cpu.registry), peer: median(cpu.peer) },
    }
  } finally {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(
    JSON.stringify(
      await benchPull({
        layerBytes: Number(process.env.LAYER_BYTES ?? 40 * MiB),
        runs: Number(process.env.RUNS ?? 5),
      }),
      null,
      2,
    ),
  )
}
