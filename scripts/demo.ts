/**
 * `npm run demo`: a registry and three local nodes (containerd + kagami each) on 127.0.0.1. Node A pulls an
 * image through the registry; the registry stops; B pulls by tag and C by digest from their peers. Prints
 * which node served which blob, and cleans everything up.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  buildImage,
  type ClusterNode,
  kagamiCli,
  pushImage,
  type RegistryHandle,
  startCluster,
  startRegistry,
  tempDir,
  waitFor,
} from '../test/harness/index.js'

type Node = ClusterNode

const mb = (n: number): string => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`)
const short = (d: string): string => `${d.slice(0, 19)}…`

interface RequestLine {
  msg: string
  method: string
  path: string
  status: number
  source?: string
  peer?: string
  bytes?: number
  durationMs: number
  digest?: string
}

async function requestLines(node: Node, since: number): Promise<RequestLine[]> {
  const text = await readFile(node.kagami.process.logPath, 'utf8')
  return text
    .split('\n')
    .slice(since)
    .filter((l) => l.includes('"msg":"request"') && l.includes('"component":"mirror"'))
    .map((l) => JSON.parse(l) as RequestLine)
}

async function logLength(node: Node): Promise<number> {
  return (await readFile(node.kagami.process.logPath, 'utf8')).split('\n').length - 1
}

async function main(): Promise<void> {
  const cleanup: (() => Promise<void>)[] = []
  const nodes: Node[] = []
  let registry: RegistryHandle | undefined
  const started = Date.now()
  try {
    console.log('kagami demo: 1 registry + 3 nodes (containerd + kagami each), all on 127.0.0.1\n')
    const tmp = await tempDir('demo')
    cleanup.push(() => tmp.remove())
    registry = await startRegistry()
    const reg = registry
    cleanup.push(() => reg.destroy())
    const image = await buildImage({
      dir: join(tmp.path, 'image'),
      layers: [24_000_000, 6_000_000, 800_000],
      platforms: ['linux/amd64', 'linux/arm64'],
    })
    const ref = `${registry.host}/demo/app:v1`
    await pushImage(image.dir, ref)
    const amd64 = image.manifests.find((m) => m.platform === 'linux/amd64')!
    const total = [amd64.config, ...amd64.layers].reduce(
      (n, d) => n + d.size,
      amd64.descriptor.size + image.root.size,
    )
    console.log(
      `registry  ${registry.url}   image ${ref.split('/').slice(1).join('/')}: 2 platforms, 3 layers, ${mb(total)} per platform`,
    )

    const cluster = await startCluster({
      names: ['node-a', 'node-b', 'node-c'],
      registries: [registry.url],
      logLevel: 'debug',
    })
    cleanup.push(() => cluster.destroy())
    nodes.push(...cluster.nodes)
    for (const n of nodes) {
      console.log(
        `${n.name}    containerd ${n.containerd.address}   mirror ${n.kagami.mirrorUrl}   peer ${n.kagami.peerUrl}`,
      )
    }
    const names = new Map<string, string>()
    for (const n of nodes) names.set((await n.kagami.status()).peerId, n.name)
    console.log('\nall three nodes found each other on the DHT\n')

    const pull = async (node: Node, what: string, pullRef: string): Promise<void> => {
      const from = await logLength(node)
      const t0 = Date.now()
      await node.containerd.pull(pullRef, { hostsDir: node.hostsDir })
      const seconds = ((Date.now() - t0) / 1000).toFixed(2)
      const lines = (await requestLines(node, from)).filter((l) => l.method === 'GET' && l.status < 300)
      const misses = (await requestLines(node, from)).filter((l) => l.status === 404)
      const viaPeers = lines.filter((l) => l.source === 'peer')
      const bytes = viaPeers.reduce((n, l) => n + (l.bytes ?? 0), 0)
      console.log(`${node.name}: ${what} in ${seconds} s`)
      if (viaPeers.length === 0) {
        const slowest = Math.max(0, ...misses.map((l) => l.durationMs))
        console.log(
          `  every blob came from the registry (kagami answered ${misses.length} misses, slowest in ${slowest} ms)`,
        )
      }
      for (const l of viaPeers) {
        const kind = l.path.includes('/manifests/') ? 'manifest' : 'blob    '
        console.log(
          `  ${kind} ${short(l.digest ?? '')}  ${mb(l.bytes ?? 0).padStart(8)}  from ${names.get(l.peer ?? '') ?? l.peer}  (${l.durationMs} ms)`,
        )
      }
      if (viaPeers.length > 0) console.log(`  ${mb(bytes)} from peers, 0 bytes from the registry`)
      console.log('')
    }

    const [a, b, c] = nodes as [Node, Node, Node]
    await pull(a, `pulled ${ref} with the registry up`, ref)
    await waitFor(async () => ((await a.kagami.status()).advertisedKeys >= 6 ? true : undefined), {
      timeoutMs: 15_000,
      what: 'node-a to advertise',
    })
    await registry.stop()
    console.log('■ registry stopped: from here on, an image pull can only succeed through peers\n')
    await pull(b, `pulled ${ref} by tag`, ref)
    const byDigest = `${registry.host}/demo/app@${image.root.digest}`
    await pull(c, `pulled …@${short(image.root.digest)} by digest`, byDigest)
    for (const n of [b, c]) {
      for (const d of [amd64.config, ...amd64.layers]) {
        const bytes = await readFile(join(n.containerd.contentDir, 'blobs', 'sha256', d.digest.slice(7)))
        if (bytes.length !== d.size)
          throw new Error(`${n.name}: ${d.digest} has ${bytes.length} bytes, want ${d.size}`)
      }
    }
    console.log('node-b and node-c hold byte-identical blobs (checked against the image built at the start)')
    const s = await c.kagami.status()
    console.log(
      `\n$ kagami status --mirror-address ${c.kagami.mirrorAddress}\n${(await kagamiCli(['status', '--mirror-address', c.kagami.mirrorAddress])).trimEnd()}`,
    )
    void s
  } finally {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined)
    console.log(
      `\ncleaned up: processes stopped, temp dirs removed (${((Date.now() - started) / 1000).toFixed(1)} s in all)`,
    )
  }
}

main().catch((err: Error) => {
  console.error(`demo failed: ${err.message}`)
  process.exitCode = 1
})
