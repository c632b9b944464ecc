import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Digest, parseReference } from '../../src/oci/index.js'
import type { Image, Store, StoreEvent } from '../../src/store/store.js'
import { type BuiltImage, buildImage, tempDir } from '../harness/index.js'

export interface StoreFixture {
  store: Store
  /** Makes the store hold `image` under `name` (`registry/repo:tag`), as a pull of linux/amd64 would. */
  seed(image: BuiltImage, name: string): Promise<void>
  deleteImage(name: string): Promise<void>
  /** Starts a download that stops after `partial` of `totalBytes` bytes (a pull cut off mid-blob). */
  startIngest(ref: string, partial: Buffer, totalBytes: number, expected: Digest): Promise<void>
  /** False when this setup cannot read downloads in progress (containerd without its content dir). */
  ingestsReadable?: boolean
  /** Restarts the backend (containerd), when there is one. */
  restartBackend?(): Promise<void>
  teardown(): Promise<void>
}

async function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of stream) chunks.push(c as Buffer)
  return Buffer.concat(chunks)
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

/** Takes events from a watch until `match` returns true, or fails after the deadline. */
async function nextMatching(
  it: AsyncIterator<StoreEvent>,
  match: (e: StoreEvent) => boolean,
  timeoutMs = 15_000,
): Promise<StoreEvent> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const left = deadline - Date.now()
    if (left <= 0) throw new Error('timed out waiting for a store event')
    let timer: NodeJS.Timeout | undefined
    const r = await Promise.race([
      it.next(),
      new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), left))),
    ])
    clearTimeout(timer)
    if (r === 'timeout') throw new Error('timed out waiting for a store event')
    if (r.done === true) throw new Error('watch ended')
    if (match(r.value)) return r.value
  }
}

/**
 * One suite for every Store implementation: bytes, digests, ranges, typed errors, watch and teardown.
 * `setup` starts a fresh store; the suite builds its own 2-platform image and seeds it.
 */
export function storeConformance(name: string, setup: () => Promise<StoreFixture>): void {
  describe(`Store conformance: ${name}`, () => {
    let fx: StoreFixture
    let image: BuiltImage
    let tmp: { path: string; remove(): Promise<void> }
    const imageName = `127.0.0.1:5000/conformance/app:v1`
    let amd64: BuiltImage['manifests'][number]
    let layer: { digest: Digest; bytes: Buffer }
    let resourcesBefore: string[]

    beforeAll(async () => {
      resourcesBefore = process.getActiveResourcesInfo()
      tmp = await tempDir('store-conformance')
      image = await buildImage({
        dir: tmp.path,
        // the first layer spans several read chunks (up to 4 MiB each), so an abort lands mid-read
        layers: [12_000_000, 70_000],
        platforms: ['linux/amd64', 'linux/arm64'],
      })
      amd64 = image.manifests.find((m) => m.platform === 'linux/amd64') as BuiltImage['manifests'][number]
      const d = amd64.layers[0]!.digest
      layer = { digest: d, bytes: await readFile(image.blobs.get(d)!.path) }
      fx = await setup()
      await fx.seed(image, imageName)
    })

    afterAll(async () => {
      await fx?.teardown()
      await tmp?.remove()
    })

    it('lists the image with its index as target', async () => {
      const images = await fx.store.images()
      const img = images.find((i) => i.name === imageName)
      expect(img?.target.digest).toBe(image.root.digest)
      expect(img?.target.mediaType).toBe(image.root.mediaType)
      expect(img?.target.size).toBe(image.root.size)
    })

    it('resolves a tag, and a missing tag is NotFoundError', async () => {
      expect((await fx.store.resolve(parseReference(imageName))).digest).toBe(image.root.digest)
      await expect(
        fx.store.resolve(parseReference('127.0.0.1:5000/conformance/app:nope')),
      ).rejects.toMatchObject({
        name: 'NotFoundError',
      })
    })

    it('reads every reachable blob byte-exact, index → manifest → config + layers', async () => {
      const img = (await fx.store.images()).find((i) => i.name === imageName) as Image
      const reachable = await fx.store.reachable(img)
      const want = [
        image.root.digest,
        amd64.descriptor.digest,
        amd64.config.digest,
        ...amd64.layers.map((l) => l.digest),
      ]
      expect(reachable).toEqual(expect.arrayContaining(want))
      for (const d of reachable) {
        expect(image.blobs.has(d)).toBe(true)
        const bytes = await collect(await fx.store.read(d))
        expect(sha(bytes)).toBe(d)
        const info = await fx.store.stat(d)
        expect(info.sizeBytes).toBe(image.blobs.get(d)!.sizeBytes)
      }
      // after a walk the media types of manifests are known (the registry needs them for Content-Type)
      expect((await fx.store.stat(amd64.descriptor.digest)).mediaType).toBe(amd64.descriptor.mediaType)
    })

    it.each([
      ['first byte', 0, 0],
      ['middle', 1000, 70_000],
      ['last byte', -1, -1],
      ['open end', 12345, undefined],
      ['end past the end is clamped', 5, 10_000_000],
    ])('reads a range: %s', async (_name, s, e) => {
      const size = layer.bytes.length
      const start = s < 0 ? size - 1 : s
      const end = e === undefined ? undefined : e < 0 ? size - 1 : e
      const got = await collect(await fx.store.read(layer.digest, { range: { start, end } }))
      expect(got.equals(layer.bytes.subarray(start, end === undefined ? undefined : end + 1))).toBe(true)
    })

    it('a range starting past the end is RangeNotSatisfiableError with the size', async () => {
      const size = layer.bytes.length
      await expect(fx.store.read(layer.digest, { range: { start: size } })).rejects.toMatchObject({
        name: 'RangeNotSatisfiableError',
        sizeBytes: size,
      })
      await expect(fx.store.read(layer.digest, { range: { start: 10, end: 5 } })).rejects.toMatchObject({
        name: 'RangeNotSatisfiableError',
      })
    })

    it('an unknown digest is NotFoundError, a malformed one InvalidDigestError', async () => {
      const unknown = `sha256:${'f'.repeat(64)}` as Digest
      await expect(fx.store.stat(unknown)).rejects.toMatchObject({ name: 'NotFoundError' })
      await expect(fx.store.read(unknown)).rejects.toMatchObject({ name: 'NotFoundError' })
      for (const bad of ['sha256:xyz', `sha256:${'F'.repeat(64)}`, '../../etc/passwd', '']) {
        await expect(fx.store.stat(bad as Digest)).rejects.toMatchObject({ name: 'InvalidDigestError' })
        await expect(fx.store.read(bad as Digest)).rejects.toMatchObject({ name: 'InvalidDigestError' })
      }
    })

    it('abort mid-read destroys the stream with an error', async () => {
      const ac = new AbortController()
      const stream = await fx.store.read(layer.digest, { signal: ac.signal })
      let got = 0
      await expect(
        (async () => {
          for await (const c of stream) {
            got += (c as Buffer).length
            ac.abort()
          }
        })(),
      ).rejects.toMatchObject({ name: 'AbortError' })
      expect(got).toBeLessThan(layer.bytes.length)
    })

    it('watch: snapshot first, then create and delete', async () => {
      const ac = new AbortController()
      const events = fx.store.watch({ signal: ac.signal })[Symbol.asyncIterator]()
      const first = await nextMatching(events, () => true)
      expect(first.type).toBe('snapshot')
      expect(first.type === 'snapshot' && first.images.map((i) => i.name)).toContain(imageName)

      const second = '127.0.0.1:5000/conformance/app:v2'
      await fx.seed(image, second)
      const created = await nextMatching(
        events,
        (e) => (e.type === 'create' || e.type === 'update') && e.image.name === second,
      )
      expect(created.type !== 'snapshot' && created.type !== 'delete' && created.image.target.digest).toBe(
        image.root.digest,
      )

      await fx.deleteImage(second)
      const deleted = await nextMatching(events, (e) => e.type === 'delete')
      expect(deleted).toEqual({ type: 'delete', name: second })
      expect((await fx.store.images()).map((i) => i.name)).not.toContain(second)
      ac.abort()
      await events.return?.()
    })

    it('lists a download in progress with its expected digest and size, and discards it', async () => {
      const expected = sha(Buffer.from('the whole blob')) as Digest
      const ref = `layer-${expected}` // as containerd's pulls name them
      await fx.startIngest(ref, Buffer.from('the whole'), 14, expected)
      const ingest = (await fx.store.ingests()).find((i) => i.ref === ref)
      expect(ingest).toEqual({ ref, expected, offsetBytes: 9, totalBytes: 14 })
      await fx.store.abortIngest(ref)
      expect((await fx.store.ingests()).map((i) => i.ref)).not.toContain(ref)
      await fx.store.abortIngest(ref) // already gone: no error
    })

    it('streams a download in progress as far as it grew, then fails once it stops growing', async () => {
      const whole = Buffer.from('the whole blob, in flight')
      const expected = sha(whole) as Digest
      const ref = `layer-${expected}`
      await fx.startIngest(ref, whole.subarray(0, 9), whole.length, expected)
      if (fx.ingestsReadable === false) {
        await expect(
          fx.store.readIngest(ref, { sizeBytes: whole.length, idleTimeoutMs: 100 }),
        ).rejects.toMatchObject({
          name: 'NotFoundError',
        })
        await fx.store.abortIngest(ref)
        return
      }
      const got: Buffer[] = []
      const body = await fx.store.readIngest(ref, { sizeBytes: whole.length, idleTimeoutMs: 300 })
      await expect(
        (async () => {
          for await (const c of body) got.push(c as Buffer)
        })(),
      ).rejects.toMatchObject({ name: 'IngestStalledError' })
      expect(Buffer.concat(got).toString()).toBe('the whole')
      // a range of it, from the middle
      const part: Buffer[] = []
      const tail = await fx.store.readIngest(ref, {
        sizeBytes: whole.length,
        idleTimeoutMs: 100,
        range: { start: 4 },
      })
      await expect(
        (async () => {
          for await (const c of tail) part.push(c as Buffer)
        })(),
      ).rejects.toMatchObject({ name: 'IngestStalledError' })
      expect(Buffer.concat(part).toString()).toBe('whole')
      await fx.store.abortIngest(ref)
      await expect(
        fx.store.readIngest(ref, { sizeBytes: whole.length, idleTimeoutMs: 100 }),
      ).rejects.toMatchObject({
        name: 'NotFoundError',
      })
    })

    it('writes content that can be followed while it is written, then reads it as ordinary content', async () => {
      const whole = Buffer.alloc(3 * 1024 * 1024 + 17)
      for (let i = 0; i < whole.length; i += 4096) whole.writeUInt32LE(i, i)
      const expected = sha(whole) as Digest
      const ref = `kagami-test-${expected}`
      const followed: Promise<Buffer>[] = []
      async function* pieces(): AsyncGenerator<Buffer> {
        for (let i = 0; i < whole.length; i += 1024 * 1024) {
          yield whole.subarray(i, i + 1024 * 1024)
          await new Promise((r) => setTimeout(r, 20))
        }
      }
      await fx.store.write(ref, { expected, sizeBytes: whole.length }, pieces(), {
        onOpen: () => {
          if (fx.ingestsReadable === false) return
          followed.push(
            fx.store
              .readIngest(ref, { sizeBytes: whole.length, idleTimeoutMs: 2000 })
              .then((body) => collect(body)),
          )
        },
      })
      expect((await fx.store.stat(expected)).sizeBytes).toBe(whole.length)
      expect(sha(await collect(await fx.store.read(expected)))).toBe(expected)
      for (const f of followed) expect(sha(await f)).toBe(expected)
      // a copy already held: nothing to do
      await fx.store.write(`${ref}-again`, { expected, sizeBytes: whole.length }, pieces())
      // bytes that do not match never become content
      const other = sha(Buffer.from('something else')) as Digest
      await expect(
        fx.store.write(`${ref}-bad`, { expected: other, sizeBytes: whole.length }, pieces()),
      ).rejects.toThrow()
      await expect(fx.store.stat(other)).rejects.toMatchObject({ name: 'NotFoundError' })
      await fx.store.abortIngest(`${ref}-bad`)
    })

    it('watch survives a backend restart: a new snapshot, then live events', async (ctx) => {
      if (fx.restartBackend === undefined) return ctx.skip()
      const ac = new AbortController()
      const events = fx.store.watch({ signal: ac.signal })[Symbol.asyncIterator]()
      expect((await nextMatching(events, () => true)).type).toBe('snapshot')
      await fx.restartBackend()
      const snap = await nextMatching(events, (e) => e.type === 'snapshot', 30_000)
      expect(snap.type === 'snapshot' && snap.images.map((i) => i.name)).toContain(imageName)
      const third = '127.0.0.1:5000/conformance/app:v3'
      await fx.seed(image, third)
      await nextMatching(
        events,
        (e) => e.type !== 'snapshot' && e.type !== 'delete' && e.image.name === third,
      )
      ac.abort()
      await events.return?.()
      // reads work again after the restart
      expect(sha(await collect(await fx.store.read(layer.digest)))).toBe(layer.digest)
    }, 60_000)

    it('teardown leaves no open handles', async () => {
      await fx.teardown()
      const teardown = fx.teardown
      fx.teardown = async () => undefined
      void teardown
      const deadline = Date.now() + 5000
      let extra: string[] = []
      do {
        const after = process.getActiveResourcesInfo()
        extra = after.filter((r) => !resourcesBefore.includes(r) && r !== 'Timeout' && r !== 'TTYWrap')
        if (extra.length === 0) break
        await new Promise((r) => setTimeout(r, 100))
      } while (Date.now() < deadline)
      expect(extra).toEqual([])
    })
  })
}
