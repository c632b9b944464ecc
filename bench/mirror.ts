/**
 * Blob throughput and request latency, side by side in one run:
 * - 1 GiB blob over one stream: raw loopback TCP copy (the limit) vs docker-registry vs kagami
 *   (peer endpoint on node A → mirror on node B → curl);
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
import { curl, GiB, log, median, stats, type Stats } from './lib.js'

export interface MirrorBenchResult {
  blobBytes: number
  runs: number
  /** `peerDirect`: curl straight from node A's peer endpoint (one hop), to split the relay's cost from the peer's. */
  gibPerSecond: { rawTcp: number; registry: number; kagami: number; peerDirect: number }
  ratios: { kagamiVsRaw: number; kagamiVsRegistry: number }
  manifestHitTtfbMs: Stats
  missTtfbMs: Stats
}

// The limit: the kernel's sendfile on one side, 4 MiB recv_into on the other, so neither end is the
// bottleneck (a Node reader gets 64 KiB per read and tops out well below the link).
const RAW_SERVER = `
import socket, sys
path, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", port)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
with open(path, "rb") as f: c.sendfile(f)
c.close()
`
const RAW_CLIENT = `
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); buf = bytearray(4 << 20); n = 0
while True:
    k = c.recv_into(buf)
    if k == 0: break
    n += k
print(n)
`

/** Raw loopback TCP between two processes: the limit for one stream on this machine. */
async function rawTcp(path: string): Promise<{ seconds: number; bytes: number }> {
  const port = await freePort()
  const server = spawn('python3', ['-c', RAW_SERVER, path, String(port)])
  try {
    await new Promise<void>((resolve, reject) => {
      server.stdout.once('data', () => resolve())
      server.once('exit', () => reject(new Error('raw TCP server exited')))
    })
    const t0 = performance.now()
    const out = await run('python3', ['-c', RAW_CLIENT, String(port)])
    return { seconds: (performance.now() - t0) / 1000, bytes: Number(out.trim()) }
  } finally {
    server.kill()
  }
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
      logLevel: 'warn',
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

    const blobPath = join(ca.contentDir, 'blobs', 'sha256', layer.digest.slice(7))
    const ns = encodeURIComponent(registry.host)
    const rates = {
      rawTcp: [] as number[],
      registry: [] as number[],
      kagami: [] as number[],
      peerDirect: [] as number[],
    }
    for (let i = 0; i < runs; i++) {
      const raw = await rawTcp(blobPath)
      if (raw.bytes !== layer.size) throw new Error(`raw TCP copied ${raw.bytes} bytes, want ${layer.size}`)
      rates.rawTcp.push(raw.bytes / raw.seconds / GiB)
      const r = await curl(`${registry.url}/v2/bench/big/blobs/${layer.digest}`)
      if (r.status !== 200 || r.bytes !== layer.size) throw new Error(`registry: ${r.status} ${r.bytes}`)
      rates.registry.push(r.bytes / r.seconds / GiB)
      const k = await curl(`${b.mirrorUrl}/v2/bench/big/blobs/${layer.digest}?ns=${ns}`)
      if (k.status !== 200 || k.bytes !== layer.size) throw new Error(`kagami: ${k.status} ${k.bytes}`)
      rates.kagami.push(k.bytes / k.seconds / GiB)
      const p = await curl(`${a.peerUrl}/v2/bench/big/blobs/${layer.digest}?ns=${ns}`)
      if (p.status !== 200 || p.bytes !== layer.size) throw new Error(`peer: ${p.status} ${p.bytes}`)
      rates.peerDirect.push(p.bytes / p.seconds / GiB)
      log(
        `mirror: run ${i + 1}: raw ${rates.rawTcp.at(-1)!.toFixed(2)}, registry ${rates.registry.at(-1)!.toFixed(2)}, kagami ${rates.kagami.at(-1)!.toFixed(2)}, peer direct ${rates.peerDirect.at(-1)!.toFixed(2)} GiB/s`,
      )
    }

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
    const g = {
      rawTcp: median(rates.rawTcp),
      registry: median(rates.registry),
      kagami: median(rates.kagami),
      peerDirect: median(rates.peerDirect),
    }
    return {
      blobBytes: layer.size,
      runs,
      gibPerSecond: g,
      ratios: { kagamiVsRaw: g.kagami / g.rawTcp, kagamiVsRegistry: g.kagami / g.registry },
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
