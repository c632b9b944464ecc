/**
 * Tag HEAD latency through the mirror (issue #13), the request containerd sends first on every pull by tag:
 * - upstream up: the mirror asks the registry (behind a proxy adding `delayMs` each way, so one round trip
 *   is 2 × delayMs) and serves the bytes from the local store or a peer; should cost ≈ one upstream round
 *   trip;
 * - upstream down: the registry stopped, the mirror falls back to the peers' tag; after the first failure
 *   the back-off skips the registry, so this should be as fast as any peer hit (p99 ≤ 25 ms).
 */
import { join } from 'node:path'
import {
  buildImage,
  type ClusterNode,
  pushImage,
  run,
  startCluster,
  startRegistry,
  tempDir,
  waitFor,
} from '../test/harness/index.js'
import { log, type Stats, stats } from './lib.js'
import { startProxy } from './proxy.js'

export interface TagsBenchResult {
  /** One-way delay of the proxy in front of the registry; one round trip = 2 × delayMs. */
  delayMs: number
  samples: number
  /** curl HEAD straight to the registry through the proxy (a new connection: connect + request). */
  upstreamDirectMs: Stats
  /** Mirror HEAD by tag, upstream up, manifest held by a peer. */
  upPeerMs: Stats
  /** Mirror HEAD by tag, upstream up, manifest held by the node itself. */
  upLocalMs: Stats
  /** Mirror HEAD by tag, upstream stopped: fallback to the peers' tag (back-off after the first failure). */
  downMs: Stats
  /**
   * The same request on a node with `--resolve-tags-from-peers=always` (the peers' tag, upstream never
   * asked: the behaviour before tag resolution), interleaved with `downMs` so both see the same load.
   */
  alwaysMs: Stats
}

const ACCEPT = 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json'

/** One HEAD with curl (the client every scenario uses); returns status and total ms. */
async function head(url: string): Promise<{ status: number; ms: number }> {
  const out = await run('curl', [
    '-s',
    '-I',
    '-o',
    '/dev/null',
    '--max-time',
    '10',
    '-H',
    ACCEPT,
    '-w',
    '%{http_code} %{time_total}',
    url,
  ])
  const [status, total] = out.trim().split(' ').map(Number) as [number, number]
  return { status, ms: total * 1000 }
}

async function sample(url: string, n: number, want: number): Promise<Stats> {
  const ms: number[] = []
  for (let i = 0; i < n; i++) {
    const r = await head(url)
    if (r.status !== want) throw new Error(`HEAD ${url} answered ${r.status}, want ${want}`)
    ms.push(r.ms)
  }
  return stats(ms)
}

export async function benchTags(init: { samples?: number; delayMs?: number } = {}): Promise<TagsBenchResult> {
  const samples = init.samples ?? 200
  const delayMs = init.delayMs ?? 10
  const cleanup: (() => Promise<void>)[] = []
  try {
    const tmp = await tempDir('bench-tags')
    cleanup.push(() => tmp.remove())
    const registry = await startRegistry()
    cleanup.push(() => registry.destroy())
    const [host, port] = registry.host.split(':') as [string, string]
    const proxy = await startProxy({ target: { host, port: Number(port) }, delayMs })
    cleanup.push(() => proxy.close())
    const image = await buildImage({ dir: join(tmp.path, 'img'), layers: [100_000], seed: 'bench-tags' })
    await pushImage(image.dir, `${registry.host}/bench/tags:v1`)
    const cluster = await startCluster({
      names: ['tags-a', 'tags-b', 'tags-c'],
      registries: [proxy.url],
      extraArgs: (name) => (name === 'tags-c' ? ['--resolve-tags-from-peers', 'always'] : []),
      logLevel: 'warn',
      env: { KAGAMI_FROM_DIST: '1' },
    })
    cleanup.push(() => cluster.destroy())
    const [a, b, c] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode]
    const ref = `${proxy.host}/bench/tags:v1`
    await a.containerd.pull(ref, { hostsDir: a.hostsDir })
    const ns = encodeURIComponent(proxy.host)
    for (const n of [b, c])
      await waitFor(
        async () =>
          (await head(`${n.kagami.mirrorUrl}/v2/bench/tags/manifests/${image.root.digest}?ns=${ns}`))
            .status === 200,
        { timeoutMs: 30_000, what: `${n.name} finds the image on A` },
      )
    const tagPath = `/v2/bench/tags/manifests/v1?ns=${ns}`

    log(`tags: ${samples} HEADs each; upstream round trip ${2 * delayMs} ms`)
    const upstreamDirectMs = await sample(`${proxy.url}/v2/bench/tags/manifests/v1`, samples, 200)
    const upPeerMs = await sample(`${b.kagami.mirrorUrl}${tagPath}`, samples, 200)
    const upLocalMs = await sample(`${a.kagami.mirrorUrl}${tagPath}`, samples, 200)
    await registry.stop()
    const down: number[] = []
    const always: number[] = []
    for (let i = 0; i < samples; i++) {
      for (const [node, into] of [
        [b, down],
        [c, always],
      ] as const) {
        const r = await head(`${node.kagami.mirrorUrl}${tagPath}`)
        if (r.status !== 200) throw new Error(`HEAD on ${node.name} answered ${r.status}`)
        into.push(r.ms)
      }
    }
    const downMs = stats(down)
    const alwaysMs = stats(always)
    log(
      `tags: direct p50 ${upstreamDirectMs.p50.toFixed(1)} ms; up via peer p50 ${upPeerMs.p50.toFixed(1)} / p99 ${upPeerMs.p99.toFixed(1)} ms; up local p50 ${upLocalMs.p50.toFixed(1)} ms; down p50 ${downMs.p50.toFixed(1)} / p99 ${downMs.p99.toFixed(1)} ms; always (no upstream) p50 ${alwaysMs.p50.toFixed(1)} / p99 ${alwaysMs.p99.toFixed(1)} ms`,
    )
    return { delayMs, samples, upstreamDirectMs, upPeerMs, upLocalMs, downMs, alwaysMs }
  } finally {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(JSON.stringify(await benchTags({ samples: Number(process.env.SAMPLES ?? 200) }), null, 2))
}
