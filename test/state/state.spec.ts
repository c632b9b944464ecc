import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseReference } from '../../src/oci/index.js'
import { digestKey, type RoutingKey, tagKey } from '../../src/routing/keys.js'
import { memoryNetwork, memoryRouter } from '../../src/routing/memory.js'
import type { Router } from '../../src/routing/router.js'
import { StateSync } from '../../src/state.js'
import { ContainerdStore } from '../../src/store/containerd.js'
import { MemoryStore } from '../../src/store/memory.js'
import { kadDhtNetwork } from '../routing/kad-dht-fixture.js'
import { seedImage } from '../registry/fixtures.js'
import {
  buildImage,
  eventually,
  pushImage,
  startContainerd,
  startRegistry,
  tempDir,
  writeHostsDir,
} from '../harness/index.js'

const logger = pino({ level: 'silent' })

async function resolves(router: Router, key: RoutingKey): Promise<string[]> {
  const out: string[] = []
  for await (const p of router.resolve(key, { signal: AbortSignal.timeout(1500) })) out.push(p.url)
  return out
}

describe('state sync (memory store + memory router)', () => {
  it('advertises at start, on create, withdraws on delete unless another image still uses a key, honours filters', async () => {
    const network = memoryNetwork()
    const store = new MemoryStore()
    const a = memoryRouter({ network }, { id: 'a', url: 'http://a' })
    const b = memoryRouter({ network }, { id: 'b', url: 'http://b' })
    await a.start()
    await b.start()
    const first = seedImage(store, 'docker.io/library/app:v1')
    const sync = new StateSync(
      { store, router: a, logger },
      { resyncIntervalMs: 60_000, exclude: ['ghcr.io/private/*'] },
    )
    await sync.start()
    try {
      await eventually(async () =>
        expect(await resolves(b, tagKey(parseReference('app:v1')))).toEqual(['http://a']),
      )
      for (const d of [first.manifestDigest, first.configDigest, first.layerDigest]) {
        expect(await resolves(b, digestKey(d))).toEqual(['http://a'])
      }
      // a second tag of the same content, then delete the first: shared digests stay advertised
      store.setImage('docker.io/library/app:v2', {
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        digest: first.manifestDigest,
        size: first.manifest.length,
      })
      await eventually(async () =>
        expect(await resolves(b, tagKey(parseReference('app:v2')))).toEqual(['http://a']),
      )
      store.deleteImage('docker.io/library/app:v1')
      await eventually(async () => expect(await resolves(b, tagKey(parseReference('app:v1')))).toEqual([]))
      expect(await resolves(b, digestKey(first.layerDigest))).toEqual(['http://a'])
      store.deleteImage('docker.io/library/app:v2')
      await eventually(async () => expect(await resolves(b, digestKey(first.layerDigest))).toEqual([]))
      // filtered repositories are never advertised
      seedImage(store, 'ghcr.io/private/secret:v1', 1000)
      seedImage(store, 'ghcr.io/public/ok:v1', 1000)
      await eventually(async () =>
        expect(await resolves(b, tagKey(parseReference('ghcr.io/public/ok:v1')))).toEqual(['http://a']),
      )
      expect(await resolves(b, tagKey(parseReference('ghcr.io/private/secret:v1')))).toEqual([])
      // resync catches content removed without an event (containerd GC)
      const gc = seedImage(store, 'docker.io/library/gc:v1', 1234)
      await eventually(async () => expect(await resolves(b, digestKey(gc.layerDigest))).toEqual(['http://a']))
      store.removeContent(gc.layerDigest)
      await sync.resync()
      expect(await resolves(b, digestKey(gc.layerDigest))).toEqual([])
    } finally {
      await sync.stop()
    }
  })
})

describe('state sync against a real containerd and two kad-dht nodes', () => {
  let teardown: (() => Promise<void>)[] = []
  afterAll(async () => {
    for (const t of teardown.reverse()) await t()
    teardown = []
  })

  let ctx: Awaited<ReturnType<typeof setup>>
  async function setup() {
    const registry = await startRegistry()
    teardown.push(() => registry.destroy())
    const containerd = await startContainerd({ name: 'state' })
    teardown.push(() => containerd.destroy())
    const tmp = await tempDir('state')
    teardown.push(() => tmp.remove())
    await writeHostsDir(`${tmp.path}/hosts`, { registryHost: registry.host })
    const image = await buildImage({
      dir: `${tmp.path}/img`,
      layers: [200_000, 300_000],
      platforms: ['linux/amd64', 'linux/arm64'],
    })
    await pushImage(image.dir, `${registry.host}/state/app:v1`)
    const net = await kadDhtNetwork(2)
    teardown.push(() => net.teardown())
    const store = new ContainerdStore(
      { logger },
      { address: containerd.address, namespace: containerd.namespace, contentDir: containerd.contentDir },
    )
    teardown.push(() => store.close())
    const sync = new StateSync({ store, router: net.routers[0]!, logger }, { resyncIntervalMs: 60_000 })
    await sync.start()
    teardown.push(() => sync.stop())
    await sync.synced
    return { registry, containerd, tmp, image, net, store, sync }
  }
  beforeAll(async () => {
    ctx = await setup()
  }, 120_000)

  it('a pulled image’s tag and every layer digest become resolvable from another node; delete withdraws', async () => {
    const { containerd, registry, tmp, image, net } = ctx
    const ref = `${registry.host}/state/app:v1`
    await containerd.pull(ref, { hostsDir: `${tmp.path}/hosts` })
    const amd64 = image.manifests.find((m) => m.platform === 'linux/amd64')!
    const other = net.routers[1]!
    await eventually(async () =>
      expect(await resolves(other, tagKey(parseReference(ref)))).toEqual([net.urls[0]]),
    )
    for (const d of [
      image.root.digest,
      amd64.descriptor.digest,
      amd64.config.digest,
      ...amd64.layers.map((l) => l.digest),
    ]) {
      await eventually(async () => expect(await resolves(other, digestKey(d))).toEqual([net.urls[0]]))
    }
    await containerd.removeImage(ref)
    // withdrawn keys leave the other node's answers once the record validity (4 s in tests) passes
    await eventually(
      async () => expect(await resolves(other, tagKey(parseReference(ref)))).toEqual([]),
      20_000,
    )
    await eventually(
      async () => expect(await resolves(other, digestKey(amd64.layers[0]!.digest))).toEqual([]),
      20_000,
    )
  }, 90_000)
})
