import { spawn } from 'node:child_process'
import { join } from 'node:path'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { type Digest, digestOf } from '../../src/oci/index.js'
import type { StoreEvent } from '../../src/store/store.js'
import { ContainerdStore } from '../../src/store/containerd.js'
import { type StoreFixture, storeConformance } from '../conformance/store.js'
import {
  buildImage,
  pushImage,
  startContainerd,
  startRegistry,
  tempDir,
  writeHostsDir,
} from '../harness/index.js'

// The image goes through the real path: skopeo push to docker-registry, `ctr image pull` into containerd.
function containerdFixture(init: { fileReads: boolean }) {
  return async (): Promise<StoreFixture> => {
    const registry = await startRegistry()
    const containerd = await startContainerd({ name: 'store' })
    const hosts = await tempDir('hosts')
    await writeHostsDir(hosts.path, { registryHost: registry.host })
    const store = new ContainerdStore(
      { logger: pino({ level: 'silent' }) },
      {
        address: containerd.address,
        namespace: containerd.namespace,
        contentDir: init.fileReads ? containerd.contentDir : undefined,
        // an odd call size, so whole-blob and range reads cross several Content/Read calls
        grpcReadChunkBytes: 1_000_003,
      },
    )
    // The conformance suite names images 127.0.0.1:5000/…; map them to this registry's port.
    const real = (name: string): string => name.replace('127.0.0.1:5000', registry.host)
    let pushed = false
    return {
      store: {
        ...bind(store),
        images: async (o?: { signal?: AbortSignal }) =>
          (await store.images(o)).map((i) => ({
            ...i,
            name: i.name.replace(registry.host, '127.0.0.1:5000'),
          })),
        resolve: (ref: Parameters<ContainerdStore['resolve']>[0], o?: { signal?: AbortSignal }) =>
          store.resolve(
            { ...ref, registry: ref.registry === '127.0.0.1:5000' ? registry.host : ref.registry },
            o,
          ),
        watch: (o?: { signal?: AbortSignal }) => renameEvents(store.watch(o), registry.host),
        reachable: (img: Parameters<ContainerdStore['reachable']>[0], o?: { signal?: AbortSignal }) =>
          store.reachable(img, o),
      },
      async seed(image, name) {
        if (!pushed) {
          await pushImage(image.dir, real(name))
          pushed = true
          await containerd.pull(real(name), { hostsDir: hosts.path })
        } else {
          await containerd.ctr([
            'image',
            'tag',
            '--force',
            real('127.0.0.1:5000/conformance/app:v1'),
            real(name),
          ])
        }
      },
      async deleteImage(name) {
        await containerd.removeImage(real(name))
      },
      async startIngest(ref, partial, totalBytes, expected) {
        // A pull cut off mid-blob: `ctr content ingest` fed fewer bytes than expected fails at commit and
        // leaves the partial ingest. ctr sends its last write and exits without waiting for it, so the
        // bytes can be lost; try again until containerd holds them.
        for (let attempt = 0; ; attempt++) {
          const ctr = spawn(
            'ctr',
            [
              '--address',
              containerd.address,
              '-n',
              containerd.namespace,
              'content',
              'ingest',
              '--expected-size',
              String(totalBytes),
              '--expected-digest',
              expected,
              ref,
            ],
            { stdio: ['pipe', 'ignore', 'ignore'] },
          )
          ctr.stdin.end(partial)
          await new Promise((resolve) => ctr.once('close', resolve))
          const held = async (): Promise<boolean> =>
            (await store.ingests()).some((i) => i.ref === ref && i.offsetBytes === partial.length)
          const deadline = Date.now() + 2000
          while (!(await held()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
          if (await held()) return
          if (attempt === 4) throw new Error(`containerd never held the partial ingest ${ref}`)
          await store.abortIngest(ref)
        }
      },
      ingestsReadable: init.fileReads,
      restartBackend: () => containerd.restart(),
      async teardown() {
        await store.close()
        await containerd.destroy()
        await registry.destroy()
        await hosts.remove()
      },
    }
  }
}

function bind(store: ContainerdStore) {
  return {
    stat: store.stat.bind(store),
    ingests: store.ingests.bind(store),
    abortIngest: store.abortIngest.bind(store),
    readIngest: store.readIngest.bind(store),
    write: store.write.bind(store),
    read: store.read.bind(store),
    close: store.close.bind(store),
  }
}

async function* renameEvents(events: AsyncIterable<StoreEvent>, host: string) {
  const fix = <T extends { name: string }>(i: T): T => ({
    ...i,
    name: i.name.replace(host, '127.0.0.1:5000'),
  })
  for await (const e of events) {
    if (e.type === 'snapshot') yield { ...e, images: e.images.map(fix) }
    else if (e.type === 'delete') yield fix(e)
    else yield { ...e, image: fix(e.image) }
  }
}

storeConformance('containerd (direct file reads)', containerdFixture({ fileReads: true }))
storeConformance('containerd (gRPC Content/Read)', containerdFixture({ fileReads: false }))

describe('containerd store: backend down', () => {
  it('a missing socket is StoreUnavailableError, not a hang', async () => {
    const dir = await tempDir('no-containerd')
    const store = new ContainerdStore(
      { logger: pino({ level: 'silent' }) },
      { address: join(dir.path, 'containerd.sock'), namespace: 'k8s.io' },
    )
    try {
      const signal = AbortSignal.timeout(20_000)
      await expect(store.images({ signal })).rejects.toMatchObject({ name: 'StoreUnavailableError' })
      await expect(store.stat(`sha256:${'a'.repeat(64)}` as Digest, { signal })).rejects.toMatchObject({
        name: 'StoreUnavailableError',
      })
      await expect(store.read(`sha256:${'a'.repeat(64)}` as Digest, { signal })).rejects.toMatchObject({
        name: 'StoreUnavailableError',
      })
    } finally {
      await store.close()
      await dir.remove()
    }
  })
})

describe('containerd store: a brand-new node', () => {
  it('switches to direct file reads once containerd has stored its first content', async () => {
    const registry = await startRegistry()
    const containerd = await startContainerd({ name: 'fresh' })
    const hosts = await tempDir('hosts-fresh')
    const lines: { fileReads?: boolean }[] = []
    const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) })
    const store = new ContainerdStore(
      { logger },
      { address: containerd.address, namespace: containerd.namespace, contentDir: containerd.contentDir },
    )
    try {
      // the first request comes before any content exists: the file path is not there yet
      await expect(store.stat(`sha256:${'b'.repeat(64)}` as Digest)).rejects.toMatchObject({
        name: 'NotFoundError',
      })
      expect(lines.filter((l) => l.fileReads !== undefined).at(-1)?.fileReads).toBe(false)
      const image = await buildImage({ dir: join(hosts.path, 'image'), layers: [100_000] })
      const ref = `${registry.host}/fresh/app:v1`
      await pushImage(image.dir, ref)
      await writeHostsDir(hosts.path, { registryHost: registry.host })
      await containerd.pull(ref, { hostsDir: hosts.path })
      await new Promise((r) => setTimeout(r, 1100)) // past the re-check interval
      const layer = image.manifests[0]!.layers[0]!
      const chunks: Buffer[] = []
      for await (const c of await store.read(layer.digest)) chunks.push(c as Buffer)
      expect(digestOf(Buffer.concat(chunks))).toBe(layer.digest)
      expect(lines.filter((l) => l.fileReads !== undefined).at(-1)?.fileReads).toBe(true)
    } finally {
      await store.close()
      await containerd.destroy()
      await registry.destroy()
      await hosts.remove()
    }
  })
})
