/**
 * Blob throughput and request latency, side by side in one run:
 * - 1 GiB blob over one stream: raw loopback TCP (iperf3, the limit), docker-registry, a bare Node file
 *   server (the in-runtime ceiling), kagami's peer endpoint alone, and kagami's mirror relaying from a peer;
 * - time to first byte for a manifest hit via a peer, and for a miss (404).
 */
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import {
  buildImage,
  freePort,
  pushImage,
  startRegistry,
  tempDir,
  waitFor,
  writeHostsDir,
  run,
  type ClusterNode,
  startCluster,
} from '../test/harness/index.js'
import { benchMember } from './member.js'
import { curl, GiB, log, median, stats, type Stats } from './lib.js'

/** Contenders of the one-stream throughput table, every one measured in each run, side by side. */
export const CONTENDERS = ['rawTcp', 'registry', 'nodeCeiling', 'peerDirect', 'kagami'] as const
export type Contender = (typeof CONTENDERS)[number]

export interface MirrorBenchResult {
  blobBytes: number
  runs: number
  /**
   * Medians of each contender. `rawTcp`: iperf3, one stream memory to memory (the limit); `registry`:
   * docker-registry serving the blob (Go, sendfile); `nodeCeiling`: a bare Node http server piping the same
   * file with 1 MiB buffers (what this runtime does without kagami's code); `peerDirect`: curl straight
   * from node A's peer endpoint; `kagami`: curl → node B's mirror → node A's peer endpoint (the relay).
   */
  gibPerSecond: Record<Contender, number>
  /** Every run's rate per contender (GiB/s), in run order. */
  samples: Record<Contender, number[]>
  /** Ratios taken run by run (both sides from the same run), then min/median/max. */
  ratios: {
    kagamiVsRaw: number
    kagamiVsRegistry: number
    peerVsRegistry: RatioStats
    relayVsPeer: RatioStats
    relayVsRegistry: RatioStats
  }
  manifestHitTtfbMs: Stats
  missTtfbMs: Stats
}

export interface RatioStats {
  min: number
  median: number
  max: number
}

/** Ratios taken run by run (a[i] / b[i], both from the same run), then min/median/max. */
export function ratioStats(a: number[], b: number[]): RatioStats {
  const r = a.map((x, i) => x / (b[i] as number)).sort((x, y) => x - y)
  return { min: r[0] ?? NaN, median: median(r), max: r.at(-1) ?? NaN }
}

/**
 * The limit: one loopback TCP stream between two iperf3 processes (memory to memory, 1 MiB writes), so
 * neither end is the bottleneck. It is at least as fast as every contender below, which all read a file
 * too: if it were not, the row would not be a limit (issue #14: a Python sendfile pair measured below
 * docker-registry).
 */
async function rawTcp(bytes: number): Promise<{ seconds: number; bytes: number }> {
  const port = await freePort()
  const server = spawn('iperf3', ['-s', '-1', '-p', String(port)], { stdio: 'ignore' })
  try {
    // iperf3 buffers its "listening" line when stdout is a pipe: retry the client until the server is up
    let out: string | undefined
    for (let attempt = 0; out === undefined; attempt++) {
      try {
        out = await run('iperf3', [
          '-c',
          '127.0.0.1',
          '-p',
          String(port),
          '-n',
          String(bytes),
          '-l',
          '1M',
          '-J',
        ])
      } catch (err) {
        if (attempt >= 50 || server.exitCode !== null) throw err
        await new Promise((r) => setTimeout(r, 100))
      }
    }
    type Sum = { bytes: number; seconds: number }
    const r = JSON.parse(out) as { end: { sum_sent: Sum; sum_received: Sum } }
    // the sender's count is the bytes asked for; the rate is the receiver's
    const got = r.end.sum_received
    return { bytes: r.end.sum_sent.bytes, seconds: (r.end.sum_sent.bytes * got.seconds) / got.bytes }
  } finally {
    server.kill()
  }
}

// The in-runtime ceiling: the same Node as the daemon, no framework, 1 MiB file reads and socket buffers.
const NODE_CEILING = `
const { createServer } = require('node:http'); const { createReadStream, statSync } = require('node:fs')
const [path, port] = process.argv.slice(1); const size = statSync(path).size; const hwm = 1 << 20
createServer({ highWaterMark: hwm }, (req, res) => {
  res.writeHead(200, { 'content-length': String(size) })
  createReadStream(path, { highWaterMark: hwm }).pipe(res)
}).listen(Number(port), '127.0.0.1', () => console.log('ready'))
`

async function nodeCeiling(path: string): Promise<{ url: string; stop(): void }> {
  const port = await freePort()
  const child = spawn(process.execPath, ['-e', NODE_CEILING, path, String(port)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  await new Promise<void>((resolve, reject) => {
    child.stdout.once('data', () => resolve())
    child.once('exit', () => reject(new Error('node ceiling server exited')))
  })
  return { url: `http://127.0.0.1:${port}/`, stop: () => child.kill() }
}

export async function benchMirror(
  init: { blobBytes?: number; runs?: number; latencySamples?: number } = {},
): Promise<MirrorBenchResult> {
  const blobBytes = init.blobBytes ?? GiB
  const runs = init.runs ?? 3
  const cleanup: (() => Promise<void>)[] = []
  try {
    const tmp = await tempDir('bench-mirror')
    cleanup.push(() => tmp.remove())
    log(`mirror: building a ${(blobBytes / GiB).toFixed(2)} GiB single-layer image`)
    const image = await buildImage({
      dir: join(tmp.path, 'img'),
      layers: [blobBytes - 1536],
      gzip: false,
      seed: 'bench',
    })
    const layer = image.manifests[0]!.layers[0]!
    const registry = await startRegistry()
    cleanup.push(() => registry.destroy())
    await pushImage(image.dir, `${registry.host}/bench/big:v1`)
    const hosts = join(tmp.path, 'hosts')
    await writeHostsDir(hosts, { registryHost: registry.host })
    const cluster = await startCluster({
      names: ['bench-a', 'bench-b'],
      registries: [registry.url],
      logLevel: process.env.KAGAMI_BENCH_LOG_LEVEL ?? 'warn',
      env: { KAGAMI_FROM_DIST: '1' },
    })
    cleanup.push(() => cluster.destroy())
    const [na, nb] = cluster.nodes as [ClusterNode, ClusterNode]
    const ca = na.containerd
    const [a, b] = [na.kagami, nb.kagami]
    log('mirror: pulling into node A')
    await ca.pull(`${registry.host}/bench/big:v1`, { hostsDir: hosts, timeoutMs: 600_000 })
    await waitFor(async () => ((await a.status()).advertisedKeys >= 3 ? true : undefined), {
      timeoutMs: 30_000,
      what: 'A advertises',
    })
    await waitFor(async () => ((await b.status()).peers.length >= 1 ? true : undefined), {
      timeoutMs: 30_000,
      what: 'B sees A',
    })

    const member = await benchMember(cluster, na)
    cleanup.push(() => member.stop())
    const blobPath = join(ca.contentDir, 'blobs', 'sha256', layer.digest.slice(7))
    const ns = encodeURIComponent(registry.host)
    const ceiling = await nodeCeiling(blobPath)
    cleanup.push(async () => ceiling.stop())
    const urls: Record<Exclude<Contender, 'rawTcp'>, string> = {
      registry: `${registry.url}/v2/bench/big/blobs/${layer.digest}`,
      nodeCeiling: ceiling.url,
      peerDirect: `${a.peerUrl}/v2/bench/big/blobs/${layer.digest}?ns=${ns}`,
      kagami: `${b.mirrorUrl}/v2/bench/big/blobs/${layer.digest}?ns=${ns}`,
    }
    const rates = Object.fromEntries(CONTENDERS.map((c) => [c, [] as number[]])) as Record<
      Contender,
      number[]
    >
    for (let i = 0; i < runs; i++) {
      // every contender once per run, in the same order, so a noisy moment hits one run, not one contender
      for (const c of CONTENDERS) {
        if (c === 'rawTcp') {
          const raw = await rawTcp(layer.size)
          // iperf3 sends whole 1 MiB writes, so it may move up to one write more than asked
          if (raw.bytes < layer.size) throw new Error(`iperf3 moved ${raw.bytes} bytes, want ${layer.size}`)
          rates.rawTcp.push(raw.bytes / raw.seconds / GiB)
          continue
        }
        // the peer endpoint answers members only: sign as a mirror does
        const headers =
          c === 'peerDirect'
            ? [await member.authorization('GET', new URL(urls[c]).pathname + new URL(urls[c]).search)]
            : []
        const r = await curl(urls[c], headers)
        if (r.status !== 200 || r.bytes !== layer.size) throw new Error(`${c}: ${r.status} ${r.bytes}`)
        rates[c].push(r.bytes / r.seconds / GiB)
      }
      log(
        `mirror: run ${i + 1}: ${CONTENDERS.map((c) => `${c} ${rates[c].at(-1)!.toFixed(2)}`).join(', ')} GiB/s`,
      )
    }

    // The bench member (a signer with no peer endpoint) would be elected for a third of the misses' herd
    // requests and refuse them at once: gone, B's misses take the path a cluster's take.
    await member.stop()
    await waitFor(async () => ((await b.status()).peers.length === 1 ? true : undefined), {
      timeoutMs: 30_000,
      what: 'B to drop the bench member',
    })
    const samples = init.latencySamples ?? 200
    const hit: number[] = []
    const miss: number[] = []
    const accept = 'Accept: application/vnd.oci.image.manifest.v1+json'
    for (let i = 0; i < samples; i++) {
      const h = await curl(`${b.mirrorUrl}/v2/bench/big/manifests/${image.root.digest}?ns=${ns}`, [accept])
      if (h.status !== 200) throw new Error(`manifest hit answered ${h.status}`)
      hit.push(h.ttfbSeconds * 1000)
      const fake = `sha256:${(i.toString(16) + 'f'.repeat(64)).slice(0, 64)}`
      const m = await curl(`${b.mirrorUrl}/v2/bench/big/blobs/${fake}?ns=${ns}`)
      if (m.status !== 404) throw new Error(`miss answered ${m.status}`)
      miss.push(m.ttfbSeconds * 1000)
    }
    const g = Object.fromEntries(CONTENDERS.map((c) => [c, median(rates[c])])) as Record<Contender, number>
    return {
      blobBytes: layer.size,
      runs,
      gibPerSecond: g,
      samples: rates,
      ratios: {
        kagamiVsRaw: g.kagami / g.rawTcp,
        kagamiVsRegistry: g.kagami / g.registry,
        peerVsRegistry: ratioStats(rates.peerDirect, rates.registry),
        relayVsPeer: ratioStats(rates.kagami, rates.peerDirect),
        relayVsRegistry: ratioStats(rates.kagami, rates.registry),
      },
      manifestHitTtfbMs: stats(hit),
      missTtfbMs: stats(miss),
    }
  } finally {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = await benchMirror({
    blobBytes: Number(process.env.BLOB_BYTES ?? GiB),
    runs: Number(process.env.RUNS ?? 3),
  })
  console.log(JSON.stringify(r, null, 2))
}
