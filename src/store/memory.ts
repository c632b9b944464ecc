import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  type Descriptor,
  type Digest,
  digestOf,
  parseDigest,
  parseReference,
  formatReference,
  type Reference,
} from '../oci/index.js'
import { IngestStalledError, NotFoundError } from './errors.js'
import { resolveRange } from './range.js'
import type {
  AbortOptions,
  ContentInfo,
  Image,
  Ingest,
  IngestReadOptions,
  ReadOptions,
  Store,
  StoreEvent,
  WriteOptions,
} from './store.js'
import { walkImage } from './walk.js'

/**
 * A Store held in memory, for fast tests of other layers. Passes the same conformance suite as the
 * containerd store; `put`, `setImage` and `deleteImage` seed it.
 */
export class MemoryStore implements Store {
  private readonly blobs = new Map<Digest, Buffer>()
  private readonly mediaTypes = new Map<Digest, string>()
  private readonly imageMap = new Map<string, Image>()
  private readonly listeners = new Set<(event: StoreEvent) => void>()
  private readonly ingestMap = new Map<string, Ingest>()
  private readonly ingestData = new Map<string, Buffer>()

  /** Records a download in progress, as containerd's pull would open one. */
  startIngest(ingest: Ingest): void {
    this.ingestMap.set(ingest.ref, { ...ingest })
    this.ingestData.set(ingest.ref, Buffer.alloc(0))
  }

  /** Appends bytes to a download in progress (its file grows, as containerd's does). */
  writeIngest(ref: string, bytes: Uint8Array): void {
    const data = Buffer.concat([this.ingestData.get(ref) ?? Buffer.alloc(0), bytes])
    this.ingestData.set(ref, data)
    const ingest = this.ingestMap.get(ref)
    if (ingest !== undefined) ingest.offsetBytes = data.length
  }

  /** Ends a download: its bytes become content when they match, as containerd's commit does. */
  commitIngest(ref: string): void {
    const data = this.ingestData.get(ref)
    const ingest = this.ingestMap.get(ref)
    this.ingestMap.delete(ref)
    if (data !== undefined && ingest !== undefined && digestOf(data) === ingest.expected) this.put(data)
  }

  async readIngest(ref: string, options: IngestReadOptions): Promise<Readable> {
    options.signal?.throwIfAborted()
    if (!this.ingestMap.has(ref)) throw new NotFoundError(`download ${ref} not found`)
    const { start, end } = resolveRange(options.range, options.sizeBytes)
    const data = (): Buffer => this.ingestData.get(ref) ?? Buffer.alloc(0)
    const signal = options.signal
    // like the file: keeps its bytes after commit or abort, and a reader stalls once nothing more comes
    async function* chunks(): AsyncGenerator<Buffer> {
      let position = start
      let progressAt = performance.now()
      while (position <= end) {
        signal?.throwIfAborted()
        const now = data()
        if (now.length > position) {
          const part = now.subarray(position, Math.min(now.length, end + 1))
          position += part.length
          progressAt = performance.now()
          yield part
          continue
        }
        if (performance.now() - progressAt > options.idleTimeoutMs)
          throw new IngestStalledError(`download ${ref} did not grow for ${options.idleTimeoutMs} ms`)
        await sleep(10, undefined, { signal })
      }
    }
    return Readable.from(chunks(), { objectMode: false })
  }

  async ingests(options: AbortOptions = {}): Promise<Ingest[]> {
    options.signal?.throwIfAborted()
    return [...this.ingestMap.values()].map((i) => ({ ...i }))
  }

  async write(
    ref: string,
    init: { expected: Digest; sizeBytes: number },
    body: AsyncIterable<Buffer>,
    options: WriteOptions = {},
  ): Promise<void> {
    options.signal?.throwIfAborted()
    if (this.blobs.has(init.expected)) return
    this.startIngest({ ref, expected: init.expected, offsetBytes: 0, totalBytes: init.sizeBytes })
    options.onOpen?.()
    try {
      for await (const chunk of body) {
        options.signal?.throwIfAborted()
        this.writeIngest(ref, chunk)
      }
      const data = this.ingestData.get(ref) ?? Buffer.alloc(0)
      if (data.length !== init.sizeBytes || digestOf(data) !== init.expected)
        throw new Error(`write ${ref}: content does not match ${init.expected}`)
      this.commitIngest(ref)
    } catch (err) {
      this.ingestMap.delete(ref)
      throw err
    }
  }

  async abortIngest(ref: string, options: AbortOptions = {}): Promise<void> {
    options.signal?.throwIfAborted()
    this.ingestMap.delete(ref)
    this.ingestData.delete(ref)
  }

  put(bytes: Uint8Array | string, init: { mediaType?: string } = {}): Digest {
    const buf = Buffer.from(bytes)
    const digest = digestOf(buf)
    this.blobs.set(digest, buf)
    if (init.mediaType !== undefined) this.mediaTypes.set(digest, init.mediaType)
    return digest
  }

  /** Synchronous checks for test fixtures. */
  holds(digest: Digest): boolean {
    return this.blobs.has(digest)
  }

  hasImage(name: string): boolean {
    return this.imageMap.has(formatReference(parseReference(name)))
  }

  removeContent(digest: Digest): void {
    this.blobs.delete(digest)
  }

  /** Creates or updates an image; `name` is any reference (normalised like containerd names are). */
  setImage(name: string, target: Descriptor): Image {
    const reference = parseReference(name)
    const image: Image = { name: formatReference(reference), reference, target }
    const type = this.imageMap.has(image.name) ? 'update' : 'create'
    this.imageMap.set(image.name, image)
    this.mediaTypes.set(target.digest, target.mediaType)
    this.emit({ type, image })
    return image
  }

  deleteImage(name: string): void {
    const normalized = formatReference(parseReference(name))
    if (this.imageMap.delete(normalized)) this.emit({ type: 'delete', name: normalized })
  }

  private emit(event: StoreEvent): void {
    for (const l of this.listeners) l(event)
  }

  async images(options: AbortOptions = {}): Promise<Image[]> {
    options.signal?.throwIfAborted()
    return [...this.imageMap.values()]
  }

  async resolve(reference: Reference, options: AbortOptions = {}): Promise<Descriptor> {
    options.signal?.throwIfAborted()
    const image = this.imageMap.get(formatReference({ ...reference, digest: undefined }))
    if (image === undefined) throw new NotFoundError(`image ${formatReference(reference)} not found`)
    return image.target
  }

  async stat(digest: Digest, options: AbortOptions = {}): Promise<ContentInfo> {
    options.signal?.throwIfAborted()
    parseDigest(digest)
    const blob = this.blobs.get(digest)
    if (blob === undefined) throw new NotFoundError(`content ${digest} not found`)
    const info: ContentInfo = { digest, sizeBytes: blob.length }
    const mediaType = this.mediaTypes.get(digest)
    if (mediaType !== undefined) info.mediaType = mediaType
    return info
  }

  async read(digest: Digest, options: ReadOptions = {}): Promise<Readable> {
    const { sizeBytes } = await this.stat(digest, options)
    const blob = this.blobs.get(digest) as Buffer
    if (sizeBytes === 0 && options.range === undefined) return Readable.from([], { objectMode: false })
    const { start, end } = resolveRange(options.range, sizeBytes)
    const slice = blob.subarray(start, end + 1)
    const chunkBytes = 64 * 1024
    const signal = options.signal
    // Chunked like a file read, so abort mid-read behaves as it does for real content.
    async function* chunks(): AsyncGenerator<Buffer> {
      for (let i = 0; i < slice.length; i += chunkBytes) {
        signal?.throwIfAborted()
        yield slice.subarray(i, i + chunkBytes)
        await new Promise((r) => setImmediate(r))
      }
    }
    const stream = Readable.from(chunks(), { objectMode: false })
    if (signal !== undefined) {
      const onAbort = (): void => void stream.destroy(signal.reason as Error)
      signal.addEventListener('abort', onAbort, { once: true })
      stream.once('close', () => signal.removeEventListener('abort', onAbort))
    }
    return stream
  }

  async reachable(image: Image, options: AbortOptions = {}): Promise<Digest[]> {
    return await walkImage(
      image.target,
      {
        has: async (d) => this.blobs.has(d),
        readAll: async (d) => this.blobs.get(d) as Buffer,
      },
      (d) => this.mediaTypes.set(d.digest, d.mediaType),
      options,
    )
  }

  async *watch(options: AbortOptions = {}): AsyncIterable<StoreEvent> {
    const queue: StoreEvent[] = [{ type: 'snapshot', images: [...this.imageMap.values()] }]
    let wake: (() => void) | undefined
    const listener = (e: StoreEvent): void => {
      queue.push(e)
      wake?.()
    }
    const onAbort = (): void => wake?.()
    this.listeners.add(listener)
    options.signal?.addEventListener('abort', onAbort)
    try {
      while (options.signal?.aborted !== true) {
        const next = queue.shift()
        if (next !== undefined) {
          yield next
          continue
        }
        await new Promise<void>((resolve) => (wake = resolve))
        wake = undefined
      }
    } finally {
      this.listeners.delete(listener)
      options.signal?.removeEventListener('abort', onAbort)
    }
  }

  async close(): Promise<void> {
    this.listeners.clear()
  }
}

export function memoryStore(): MemoryStore {
  return new MemoryStore()
}
