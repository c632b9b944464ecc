/**
 * The cost of peer endpoint authentication (issue #11): the same blob and manifest from two nodes in one
 * run, A requiring signed requests from members (the default) and C with `--peer-auth off`. Every request to
 * A carries a fresh signature, as a mirror's do. Contenders alternate within each run.
 */
import { join } from 'node:path'
import {
  buildImage,
  type ClusterNode,
  pushImage,
  startCluster,
  startRegistry,
  tempDir,
  waitFor,
  writeHostsDir,
} from '../test/harness/index.js'
import { curl, GiB, log, MiB, stats, type Stats } from './lib.js'
import { benchMember } from './member.js'

export interface AuthBenchResult {
  blobBytes: number
  runs: number
  gibPerSecond: { on: number[]; off: number[] }
  /** median(on) / median(off) */
  throughputRatio: number
  manifestTtfbMs: { on: Stats; off: Stats }
}

export async function benchAuth(
  init: { blobBytes?: number; runs?: number; samples?: number } = {},
): Promise<AuthBenchResult> {
  const blobBytes = init.blobBytes ?? 512 * MiB
  const runs = init.runs ?? 5
  const samples = init.samples ?? 200
  const cleanup: (() => Promise<void>)[] = []
  try {
    const tmp = await tempDir('bench-auth')
    cleanup.push(() => tmp.remove())
    const image = await buildImage({
      dir: join(tmp.path, 'img'),
      layers: [blobBytes - 1536],
      gzip: false,
      seed: 'auth',
    })
    const layer = image.manifests[0]!.layers[0]!
    const registry = await startRegistry()
    cleanup.push(() => registry.destroy())
    const ref = `${registry.host}/bench/auth:v1`
    await pushImage(image.dir, ref)
    const hosts = join(tmp.path, 'hosts')
    await writeHostsDir(hosts, { registryHost: registry.host })
    const cluster = await startCluster({
      names: ['auth-a', 'auth-c'],
      registries: [registry.url],
      logLevel: 'warn',
      env: { KAGAMI_FROM_DIST: '1' },
      extraArgs: (name) => (name === 'auth-c' ? ['--peer-auth', 'off'] : []),
    })
    cleanup.push(() => cluster.destroy())
    const [a, c] = cluster.nodes as [ClusterNode, ClusterNode]
    for (const n of [a, c]) {
      await n.containerd.pull(ref, { hostsDir: hosts, timeoutMs: 600_000 })
      await waitFor(async () => ((await n.kagami.status()).advertisedKeys >= 3 ? true : undefined), {
        timeoutMs: 30_000,
        what: `${n.name} advertises`,
      })
    }
    const member = await benchMember(cluster, a)
    cleanup.push(() => member.stop())
    const ns = encodeURIComponent(registry.host)
    const blobPath = `/v2/bench/auth/blobs/${layer.digest}?ns=${ns}`
    const manifestPath = `/v2/bench/auth/manifests/${image.root.digest}?ns=${ns}`
    const accept = 'Accept: application/vnd.oci.image.manifest.v1+json'
    const on: number[] = []
    const off: number[] = []
    for (let i = 0; i < runs; i++) {
      const ra = await curl(`${a.kagami.peerUrl}${blobPath}`, [await member.authorization('GET', blobPath)])
      const rc = await curl(`${c.kagami.peerUrl}${blobPath}`)
      for (const [r, name] of [
        [ra, 'on'],
        [rc, 'off'],
      ] as const)
        if (r.status !== 200 || r.bytes !== layer.size)
          throw new Error(`auth ${name}: ${r.status} ${r.bytes}`)
      on.push(ra.bytes / ra.seconds / GiB)
      off.push(rc.bytes / rc.seconds / GiB)
      log(`auth: run ${i + 1}: on ${on.at(-1)!.toFixed(2)}, off ${off.at(-1)!.toFixed(2)} GiB/s`)
    }
    const ttfbOn: number[] = []
    const ttfbOff: number[] = []
    for (let i = 0; i < samples; i++) {
      const ha = await curl(`${a.kagami.peerUrl}${manifestPath}`, [
        accept,
        await member.authorization('GET', manifestPath),
      ])
      const hc = await curl(`${c.kagami.peerUrl}${manifestPath}`, [accept])
      if (ha.status !== 200 || hc.status !== 200) throw new Error(`manifest: ${ha.status} ${hc.status}`)
      ttfbOn.push(ha.ttfbSeconds * 1000)
      ttfbOff.push(hc.ttfbSeconds * 1000)
    }
    const result: AuthBenchResult = {
      blobBytes: layer.size,
      runs,
      gibPerSecond: { on, off },
      throughputRatio: stats(on).p50 / stats(off).p50,
      manifestTtfbMs: { on: stats(ttfbOn), off: stats(ttfbOff) },
    }
    log(
      `auth: throughput on/off ${result.throughputRatio.toFixed(3)}; manifest TTFB p50 on ${result.manifestTtfbMs.on.p50.toFixed(2)} ms, off ${result.manifestTtfbMs.off.p50.toFixed(2)} ms`,
    )
    return result
  } finally {
    for (const c of cleanup.reverse()) await c().catch(() => undefined)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = await benchAuth()
  console.log(JSON.stringify(r, null, 2))
}
