/**
 * Herd: N nodes pull the same new image at once. Reports upstream bytes (counted at a proxy in front of the
 * registry) divided by the image size, and the slowest node's pull time against a solo pull of an image of
 * the same size in the same cluster. Every node runs containerd + kagami with the mirror first.
 *
 * The WAN variant puts the registry behind a 100 Mbit/s, 20 ms RTT link (bench/proxy.ts): the herd should
 * finish in about one image-transfer time over that link, not N.
 */
import { cpus } from 'node:os'
import { join } from 'node:path'
import {
  buildImage,
  type ClusterNode,
  pushImage,
  startCluster,
  startRegistry,
  tempDir,
} from '../test/harness/index.js'
import { log, MiB, treeCpuSeconds } from './lib.js'
import { startProxy, type ThrottleProxy } from './proxy.js'

export interface HerdRun {
  nodes: number
  imageBytes: number
  upstreamBytes: number
  upstreamRatio: number
  /** Wall time until every node finished. */
  seconds: number
  slowestSeconds: number
  soloSeconds: number
  slowestVsSolo: number
  /**
   * CPU seconds all processes of the run used (containerd, kagami, registry, proxy, ctr) for the solo pull and
   * for the herd: the herd cannot finish faster than herdCpuSeconds ÷ cores on this machine, whatever the
   * design, so a slowest-vs-solo ratio near (herdCpuSeconds ÷ cores) ÷ soloSeconds is the machine's limit.
   */
  soloCpuSeconds?: number
  /** A --herd-budget other than the default, to show what coordination under load costs. */
  budget?: string
  herdCpuSeconds?: number
  cores?: number
}

export interface HerdBenchResult extends HerdRun {
  wan?: HerdRun & { linkBytesPerSecond: number; transferSeconds: number; herdVsTransfer: number }
  /** Further node counts measured in the same run (the headline fields are the first). */
  more?: HerdRun[]
}

const WAN_RATE = 12_500_000 // 100 Mbit/s
const WAN_DELAY_MS = 10 // one way: 20 ms RTT

async function timedPull(node: ClusterNode, ref: string): Promise<number> {
  const t0 = performance.now()
  await node.containerd.pull(ref, { hostsDir: node.hostsDir, timeoutMs: 600_000 })
  return (performance.now() - t0) / 1000
}

/** A solo pull of one image, then the herd pull of another of the same size, through `proxy`. */
async function herdRun(
  nodes: ClusterNode[],
  proxy: ThrottleProxy,
  images: { solo: string; herd: string },
  imageBytes: number,
): Promise<HerdRun> {
  const cpu0 = await treeCpuSeconds()
  const soloSeconds = await timedPull(nodes[0] as ClusterNode, `${proxy.host}/${images.solo}`)
  const cpu1 = await treeCpuSeconds()
  proxy.reset()
  const t0 = performance.now()
  const times = await Promise.all(nodes.map((n) => timedPull(n, `${proxy.host}/${images.herd}`)))
  const seconds = (performance.now() - t0) / 1000
  const cpu2 = await treeCpuSeconds()
  const upstreamBytes = proxy.bytesToClients()
  const slowestSeconds = Math.max(...times)
  // why bytes went upstream more than once: the herd's own counters, summed over the nodes
  const sums = new Map<string, number>()
  for (const n of nodes) {
    const text = await (await fetch(`${n.kagami.mirrorUrl}/metrics`)).text()
    for (const line of text.split('\n')) {
      const m =
        /^(kagami_herd_requests_total|kagami_peer_failures_total|kagami_herd_flights_total)\{(.*)\} (\S+)$/.exec(
          line,
        )
      if (m !== null) sums.set(`${m[1]}{${m[2]}}`, (sums.get(`${m[1]}{${m[2]}}`) ?? 0) + Number(m[3]))
    }
  }
  log(`herd: counters (cumulative) ${[...sums].map(([k, v]) => `${k}=${v}`).join(' ')}`)
  return {
    nodes: nodes.length,
    imageBytes,
    upstreamBytes,
    upstreamRatio: upstreamBytes / imageBytes,
    seconds,
    slowestSeconds,
    soloSeconds,
    slowestVsSolo: slowestSeconds / soloSeconds,
    soloCpuSeconds: cpu1 - cpu0,
    herdCpuSeconds: cpu2 - cpu1,
    cores: cpus().length,
  }
}

export async function benchHerdOnce(
  init: { nodes?: number; layerBytes?: number; layers?: number; wan?: boolean; budget?: string } = {},
): Promise<HerdBenchResult> {
  const n = init.nodes ?? 5
  const cleanup: (() => Promise<void>)[] = []
  try {
    const tmp = await tempDir('bench-herd')
    cleanup.push(() => tmp.remove())
    const registry = await startRegistry()
    cleanup.push(() => registry.destroy())
    const layers = Array(init.layers ?? 4).fill(init.layerBytes ?? 16 * MiB)
    const names = ['solo', 'herd', 'wan-solo', 'wan-herd']
    let imageBytes = 0
    for (const name of names) {
      // plain tar: random bytes do not compress, and gzip would only cost CPU on a 2-core machine
      const image = await buildImage({
        dir: join(tmp.path, name),
        layers,
        seed: `${name}-${Date.now()}`,
        gzip: false,
      })
      imageBytes = [...image.blobs.values()].reduce((s, b) => s + b.sizeBytes, 0)
      await pushImage(image.dir, `${registry.host}/bench/${name}:v1`)
    }
    const [h, p] = registry.host.split(':') as [string, string]
    const target = { host: h, port: Number(p) }
    const lan = await startProxy({ target })
    cleanup.push(() => lan.close())
    const wan = await startProxy({ target, rateBytesPerSecond: WAN_RATE, delayMs: WAN_DELAY_MS })
    cleanup.push(() => wan.close())
    // the upstreams every node's hosts.toml names are the counting proxies
    const cluster = await startCluster({
      names: Array.from({ length: n }, (_, i) => `herd-${i}`),
      registries: [lan.url, wan.url],
      logLevel: process.env.KAGAMI_BENCH_LOG_LEVEL ?? 'warn',
      // KAGAMI_HERD_BUDGET and KAGAMI_HERD from the environment reach the daemons (the harness passes it on)
      env: {
        KAGAMI_FROM_DIST: '1',
        ...(init.budget !== undefined ? { KAGAMI_HERD_BUDGET: init.budget } : {}),
      },
      minPeers: n - 1,
    })
    cleanup.push(() => cluster.destroy())
    log(
      `herd: ${n} nodes pull ${(imageBytes / MiB).toFixed(0)} MiB at once (loopback upstream${init.budget !== undefined ? `, --herd-budget ${init.budget}` : ''})`,
    )
    const run = await herdRun(
      cluster.nodes,
      lan,
      { solo: 'bench/solo:v1', herd: 'bench/herd:v1' },
      imageBytes,
    )
    log(
      `herd: upstream ${(run.upstreamBytes / MiB).toFixed(1)} MiB = ${run.upstreamRatio.toFixed(2)}× the image; slowest ${run.slowestSeconds.toFixed(1)} s vs solo ${run.soloSeconds.toFixed(1)} s = ${run.slowestVsSolo.toFixed(2)}×; CPU ${run.herdCpuSeconds?.toFixed(1)} core-s (solo ${run.soloCpuSeconds?.toFixed(1)})`,
    )
    const result: HerdBenchResult = { ...run, ...(init.budget !== undefined ? { budget: init.budget } : {}) }
    if (init.wan !== false) {
      log(`herd: ${n} nodes, upstream behind ${(WAN_RATE / 1e6) * 8} Mbit/s, ${2 * WAN_DELAY_MS} ms RTT`)
      const w = await herdRun(
        cluster.nodes,
        wan,
        { solo: 'bench/wan-solo:v1', herd: 'bench/wan-herd:v1' },
        imageBytes,
      )
      const transferSeconds = imageBytes / WAN_RATE
      result.wan = {
        ...w,
        linkBytesPerSecond: WAN_RATE,
        transferSeconds,
        herdVsTransfer: w.seconds / transferSeconds,
      }
      log(
        `herd (WAN): upstream ${w.upstreamRatio.toFixed(2)}× the image; herd ${w.seconds.toFixed(1)} s vs one transfer ${transferSeconds.toFixed(1)} s = ${result.wan.herdVsTransfer.toFixed(2)}×; slowest vs solo ${w.slowestVsSolo.toFixed(2)}×`,
      )
    }
    return result
  } finally {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined)
  }
}

/**
 * N = 5 with the WAN variant, then N = 8 (HERD_NODES=5,8 by default), then the largest N again with a 300 ms
 * --herd-budget floor (HERD_BUDGET_VARIANT; '' skips it): whether a longer wait for the elected node, when 8
 * nodes on 2 cores wake at once and answer each other slowly, changes what goes upstream.
 */
export async function benchHerd(
  init: { nodes?: number[]; layerBytes?: number } = {},
): Promise<HerdBenchResult> {
  const counts = init.nodes ?? (process.env.HERD_NODES ?? '5,8').split(',').map(Number)
  const [first, ...rest] = counts
  const result = await benchHerdOnce({
    nodes: first,
    layerBytes: init.layerBytes,
    wan: process.env.HERD_WAN !== '0',
  })
  result.more = []
  for (const n of rest)
    result.more.push(await benchHerdOnce({ nodes: n, layerBytes: init.layerBytes, wan: false }))
  const budget = process.env.HERD_BUDGET_VARIANT ?? '300ms'
  if (budget !== '')
    result.more.push(
      await benchHerdOnce({ nodes: Math.max(...counts), layerBytes: init.layerBytes, wan: false, budget }),
    )
  return result
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(JSON.stringify(await benchHerd(), null, 2))
}
