/**
 * Striping on emulated links (issue #14 item 4): three holders, each behind its own 100 Mbit/s link (a
 * throttling proxy in front of its peer endpoint, advertised as its address), and two fetching nodes side
 * by side in one run: D with striping on (`--stripe-threshold 64MiB`, the default) and E with it off
 * (`--stripe-threshold 0`, one peer at a time, the single-peer baseline). Each fetches the blob through its
 * own mirror with curl; the run alternates E and D so a noisy moment hits one run, not one contender.
 */
import { join } from 'node:path'
import {
  buildImage,
  type ClusterNode,
  freePort,
  pushImage,
  startCluster,
  startRegistry,
  tempDir,
  waitFor,
  writeHostsDir,
} from '../test/harness/index.js'
import { curl, log, median, MiB } from './lib.js'
import { type RatioStats } from './mirror.js'
import { startProxy } from './proxy.js'

export interface StripeBenchResult {
  blobBytes: number
  runs: number
  /** Each holder's link (0: none, peers reached straight on loopback). */
  linkMbitPerSecond: number
  holders: number
  /** Medians: E (one peer at a time) and D (striped). */
  mibPerSecond: { single: number; striped: number }
  samples: { single: number[]; striped: number[] }
  /** Striped over single, run by run. */
  speedup: RatioStats
  /** Runs in which the striping node did stripe (its first bytes came slower than --stripe-below-rate). */
  stripedRuns?: number
}

export async function benchStripe(
  init: { blobBytes?: number; runs?: number; linkMbitPerSecond?: number } = {},
): Promise<StripeBenchResult> {
  const blobBytes = init.blobBytes ?? 128 * MiB
  const runs = init.runs ?? 3
  const mbit = init.linkMbitPerSecond ?? 100
  const cleanup: (() => Promise<void>)[] = []
  try {
    const tmp = await tempDir('bench-stripe')
    cleanup.push(() => tmp.remove())
    log(`stripe: building a ${(blobBytes / MiB).toFixed(0)} MiB single-layer image`)
    const image = await buildImage({
      dir: join(tmp.path, 'img'),
      layers: [blobBytes - 1536],
      gzip: false,
      seed: 'stripe-bench',
    })
    const layer = image.manifests[0]!.layers[0]!
    const registry = await startRegistry()
    cleanup.push(() => registry.destroy())
    await pushImage(image.dir, `${registry.host}/bench/striped:v1`)
    const hosts = join(tmp.path, 'hosts')
    await writeHostsDir(hosts, { registryHost: registry.host })

    // each holder's peer endpoint on a port of ours, reached only through its own throttled link
    const holders = ['hold-a', 'hold-b', 'hold-c']
    const links = new Map<string, { port: number; host: string }>()
    for (const name of holders) {
      const port = await freePort()
      if (mbit <= 0) {
        links.set(name, { port, host: `127.0.0.1:${port}` }) // no emulated link: straight to the peer
        continue
      }
      const proxy = await startProxy({
        target: { host: '127.0.0.1', port },
        rateBytesPerSecond: (mbit * 1e6) / 8,
      })
      cleanup.push(() => proxy.close())
      links.set(name, { port, host: proxy.host })
    }
    const cluster = await startCluster({
      names: [...holders, 'striped', 'single'],
      registries: [registry.url],
      logLevel: 'warn',
      env: { KAGAMI_FROM_DIST: '1' },
      extraArgs: (name) => {
        const link = links.get(name)
        if (link !== undefined)
          return ['--peer-address', `127.0.0.1:${link.port}`, '--peer-advertise-address', link.host]
        return ['--stripe-threshold', name === 'striped' ? '64MiB' : '0']
      },
    })
    cleanup.push(() => cluster.destroy())
    const byName = new Map(cluster.nodes.map((n) => [n.name, n]))
    for (const name of holders) {
      log(`stripe: pulling into ${name} from the registry`)
      await byName.get(name)!.containerd.pull(`${registry.host}/bench/striped:v1`, {
        hostsDir: hosts,
        timeoutMs: 300_000,
      })
    }
    const striped = byName.get('striped') as ClusterNode
    const single = byName.get('single') as ClusterNode
    for (const n of [striped, single]) {
      await waitFor(
        async () => {
          const res = await fetch(
            `${n.kagami.mirrorUrl}/status/holders?q=${encodeURIComponent(layer.digest)}`,
          )
          return ((await res.json()) as { holders: unknown[] }).holders.length >= holders.length || undefined
        },
        { timeoutMs: 60_000, what: `${n.name} to see ${holders.length} holders` },
      )
    }
    const ns = encodeURIComponent(registry.host)
    const url = (n: ClusterNode): string =>
      `${n.kagami.mirrorUrl}/v2/bench/striped/blobs/${layer.digest}?ns=${ns}`
    const samples = { single: [] as number[], striped: [] as number[] }
    const started = async (): Promise<number> => {
      const text = await (await fetch(`${striped.kagami.mirrorUrl}/metrics`)).text()
      return Number(/^kagami_striped_blobs_total\{result="started"\} (\S+)$/m.exec(text)?.[1] ?? NaN)
    }
    const startedBefore = await started()
    for (let i = 0; i < runs; i++) {
      for (const [which, node] of [
        ['single', single],
        ['striped', striped],
      ] as const) {
        const r = await curl(url(node), [], 600)
        if (r.status !== 200 || r.bytes !== layer.size) throw new Error(`${which}: ${r.status} ${r.bytes}`)
        samples[which].push(r.bytes / r.seconds / MiB)
      }
      log(
        `stripe: run ${i + 1}: single ${samples.single.at(-1)!.toFixed(1)} MiB/s, striped ${samples.striped.at(-1)!.toFixed(1)} MiB/s`,
      )
    }
    const ratios = samples.striped.map((s, i) => s / (samples.single[i] as number)).sort((a, b) => a - b)
    return {
      blobBytes: layer.size,
      runs,
      linkMbitPerSecond: mbit,
      holders: holders.length,
      mibPerSecond: { single: median(samples.single), striped: median(samples.striped) },
      samples,
      speedup: { min: ratios[0] ?? NaN, median: median(ratios), max: ratios.at(-1) ?? NaN },
      stripedRuns: (await started()) - startedBefore,
    }
  } finally {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined)
  }
}

/**
 * Both sides of the trade-off in one scenario: 3 holders behind 100 Mbit/s links (striping must pay), and
 * the same with no link limit (a fast single peer: striping must stay out of the way).
 */
export async function benchStriping(): Promise<StripeBenchResult & { direct: StripeBenchResult }> {
  const limited = await benchStripe()
  const direct = await benchStripe({ linkMbitPerSecond: 0, blobBytes: 512 * MiB })
  return { ...limited, direct }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = await benchStripe({
    blobBytes: Number(process.env.BLOB_BYTES ?? 128 * MiB),
    runs: Number(process.env.RUNS ?? 3),
    linkMbitPerSecond: Number(process.env.LINK_MBIT ?? 100),
  })
  console.log(JSON.stringify(r, null, 2))
}
