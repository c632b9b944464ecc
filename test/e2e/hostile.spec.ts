import { connect, type Socket } from 'node:net'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  buildImage,
  type Cluster,
  type ClusterNode,
  pushImage,
  type RegistryHandle,
  run,
  startCluster,
  startRegistry,
  tempDir,
} from '../harness/index.js'

async function timed(url: string, init: RequestInit = {}): Promise<{ status: number; ms: number }> {
  const t0 = performance.now()
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(30_000) })
  await res.arrayBuffer()
  return { status: res.status, ms: performance.now() - t0 }
}

/** Operator's bad week, with real processes: a frozen containerd, a flood of connections. */
describe('e2e: a node under a stuck containerd and a connection flood', () => {
  let registry: RegistryHandle
  let cluster: Cluster | undefined
  let a: ClusterNode
  let tmp: { path: string; remove(): Promise<void> }
  let ref: string
  let layer: string

  beforeAll(async () => {
    tmp = await tempDir('hostile')
    registry = await startRegistry()
    const image = await buildImage({ dir: join(tmp.path, 'img'), layers: [200_000], seed: 'hostile' })
    ref = `${registry.host}/hostile/app:v1`
    await pushImage(image.dir, ref)
    layer = image.manifests[0]!.layers[0]!.digest
    cluster = await startCluster({ names: ['a'], registries: [registry.url] })
    a = cluster.nodes[0]!
    await a.containerd.pull(ref, { hostsDir: a.hostsDir })
  }, 120_000)

  afterAll(async () => {
    if (a !== undefined)
      await run('pkill', ['-CONT', '-f', `^containerd --config ${dirname(a.containerd.address)}/`]).catch(
        () => undefined,
      )
    await cluster?.destroy()
    await registry?.destroy()
    await tmp?.remove()
  })

  it('containerd frozen (SIGSTOP): requests still answer fast (a miss, not a 10 s wait) and /readyz says not ready', async () => {
    // the node's own tag, with the registry down: only containerd can resolve it, and it is frozen
    const tag = `${a.kagami.mirrorUrl}/v2/hostile/app/manifests/v1?ns=${encodeURIComponent(registry.host)}`
    const accept = {
      accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json',
    }
    expect((await timed(tag, { headers: accept })).status).toBe(200)
    await registry.stop()
    await run('pkill', ['-STOP', '-f', `^containerd --config ${dirname(a.containerd.address)}/`])
    try {
      for (let i = 0; i < 3; i++) {
        const r = await timed(tag, { headers: accept })
        expect(r.status).toBe(404)
        expect(r.ms).toBeLessThan(5_000)
      }
      const ready = await timed(`${a.kagami.mirrorUrl}/readyz`)
      expect(ready.status).toBe(503)
      expect((await timed(`${a.kagami.mirrorUrl}/healthz`)).status).toBe(200)
    } finally {
      await run('pkill', ['-CONT', '-f', `^containerd --config ${dirname(a.containerd.address)}/`])
      await registry.start()
    }
  }, 60_000)

  it('1,100 idle connections to the peer endpoint, 1,024 fds: the loopback mirror still serves', async () => {
    const pid = a.kagami.process.child.pid as number
    await run('prlimit', ['--pid', String(pid), '--nofile=1024:1024'])
    const u = new URL(a.kagami.peerUrl)
    const sockets: Socket[] = []
    try {
      for (let i = 0; i < 1100; i++) {
        const s = connect({ host: u.hostname, port: Number(u.port) })
        s.on('error', () => undefined)
        sockets.push(s)
      }
      await new Promise((resolve) => setTimeout(resolve, 1000))
      expect((await timed(`${a.kagami.mirrorUrl}/healthz`)).status).toBe(200)
      const blob = await timed(
        `${a.kagami.mirrorUrl}/v2/hostile/app/blobs/${layer}?ns=${encodeURIComponent(registry.host)}`,
      )
      expect(blob.status).toBe(200)
    } finally {
      for (const s of sockets) s.destroy()
    }
  }, 60_000)
})
