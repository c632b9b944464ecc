import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type BuiltImage,
  buildImage,
  type Cluster,
  type ClusterNode,
  pushImage,
  type RegistryHandle,
  startCluster,
  startRegistry,
  tempDir,
  storedDigests,
  waitFor,
} from '../harness/index.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))

/**
 * What the container image runs is the bundle (scripts/bundle.mjs), not the source the other tests run: V8's
 * lite mode, no WebAssembly (the PSK cipher and noise's small messages on their JavaScript and node:crypto
 * paths), the daemon re-executed with its parsed config. Two nodes from the build, with a PSK: one pulls
 * through the registry, the registry stops, the other pulls from it.
 */
describe('e2e: the bundled daemon (dist/kagami.mjs)', () => {
  let registry: RegistryHandle
  let image: BuiltImage
  let cluster: Cluster | undefined
  let tmp: { path: string; remove(): Promise<void> }

  beforeAll(async () => {
    await promisify(execFile)('npm', ['run', 'build'], { cwd: ROOT, timeout: 180_000 })
    tmp = await tempDir('e2e-bundle')
    registry = await startRegistry()
    image = await buildImage({ dir: join(tmp.path, 'image'), layers: [4_000_000, 300_000] })
    await pushImage(image.dir, `${registry.host}/e2e/bundle:v1`)
    cluster = await startCluster({
      names: ['bundle-a', 'bundle-b'],
      registries: [registry.url],
      env: { KAGAMI_FROM_DIST: '1' },
    })
  }, 300_000)

  afterAll(async () => {
    await cluster?.destroy()
    await registry?.destroy()
    await tmp?.remove()
  })

  it('runs with the PSK: B pulls from A with the registry stopped; bytes identical', async () => {
    const [a, b] = cluster!.nodes as [ClusterNode, ClusterNode]
    const ref = `${registry.host}/e2e/bundle:v1`
    await a.containerd.pull(ref, { hostsDir: a.hostsDir })
    const m = image.manifests[0]!
    const digests = [image.root.digest, m.config.digest, ...m.layers.map((l) => l.digest)]
    await waitFor(
      async () => ((await a.kagami.status()).advertisedKeys >= digests.length ? true : undefined),
      { timeoutMs: 15_000, what: 'A advertises the image' },
    )
    await registry.stop()
    // A's list reaches B a moment after A advertises: wait until B's mirror has the tag from a peer
    const tagUrl = `${b.kagami.mirrorUrl}/v2/e2e/bundle/manifests/v1?ns=${encodeURIComponent(registry.host)}`
    await waitFor(
      async () => {
        const res = await fetch(tagUrl, { method: 'HEAD', headers: { accept: image.root.mediaType } })
        return res.status === 200 ? true : undefined
      },
      { timeoutMs: 15_000, what: "B's mirror to find the tag on A" },
    )
    await b.containerd.pull(ref, { hostsDir: b.hostsDir })
    expect(await storedDigests(b.containerd, digests)).toEqual(digests)
    expect((await b.kagami.status()).requests.peer).toBeGreaterThan(0)
  }, 120_000)
})
