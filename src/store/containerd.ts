import { constants } from 'node:fs'
import { access, readdir, readFile, stat as fsStat } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import * as grpc from '@grpc/grpc-js'
import type { Logger } from 'pino'
import { BufferPool } from '../buffer-pool.js'
import {
  type Descriptor,
  type Digest,
  digestHex,
  formatReference,
  isDigest,
  parseDigest,
  parseReference,
  type Reference,
} from '../oci/index.js'
import {
  ContainerdClient,
  type PbEnvelope,
  type PbImage,
  type PbWriteRequest,
  type PbWriteResponse,
} from './containerd-client.js'
import { NotFoundError, StoreUnavailableError } from './errors.js'
import { readFileRange } from './file-read.js'
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
import { tailFile } from './tail.js'
import { walkImage } from './walk.js'

export interface ContainerdStoreComponents {
  logger: Logger
  /** Buffers for direct file reads, shared with the HTTP side that recycles them (default: its own). */
  pool?: BufferPool
}

export interface ContainerdStoreInit {
  /** Unix socket path of containerd's gRPC API. */
  address: string
  namespace: string
  /** `<root>/io.containerd.content.v1.content`; when readable, blobs are read from files (~20× faster than gRPC). */
  contentDir?: string
  /** Bounded reconnect backoff for `watch` after containerd goes away. */
  reconnectMaxDelayMs?: number
  /**
   * Deadline for the single-item lookups on a request's path (image by name, content info): a stuck
   * containerd must turn into a fast miss, not a 10 s wait per request (default 1 s).
   */
  lookupTimeoutMs?: number
  /** Bytes per gRPC Content/Read call (default 64 MiB); tests set it small to cross call boundaries. */
  grpcReadChunkBytes?: number
}

// One Read call per 64 MiB: per-call setup showed with 4 MiB calls (0.12 → 0.24 GiB/s with the larger
// flow-control window in containerd-client.ts). Memory stays bounded by that window, not by the call size.
const GRPC_READ_CHUNK = 64 * 1024 * 1024
const FILE_HIGH_WATER_MARK = 4 * 1024 * 1024
/** File reads: 1 MiB per read(2), as a bare Node file server's fastest setting here (bench/mirror.ts). */
const FILE_READ_BYTES = 1024 * 1024
const FILE_READS_RECHECK_MS = 1000
// gRPC's default message limit is 4 MiB: content goes to containerd in 1 MiB writes
const WRITE_CHUNK_BYTES = 1024 * 1024

/** Maps gRPC failures to Store errors; NOT_FOUND is normal traffic, UNAVAILABLE means containerd is down. */
function mapError(err: unknown, what: string): Error {
  const code = (err as grpc.ServiceError).code
  if (code === grpc.status.NOT_FOUND) return new NotFoundError(`${what} not found`)
  if (code === grpc.status.UNAVAILABLE || code === grpc.status.DEADLINE_EXCEEDED) {
    return new StoreUnavailableError(`containerd unavailable: ${(err as Error).message}`)
  }
  if (code === grpc.status.CANCELLED) {
    const e = new Error(`${what}: aborted`)
    e.name = 'AbortError'
    return e
  }
  return err as Error
}

function toImage(pb: PbImage): Image | undefined {
  if (pb.target === null) return undefined
  let reference: Reference
  try {
    reference = parseReference(pb.name)
  } catch {
    return undefined // e.g. names containerd keeps that are not image references
  }
  let digest: Digest
  try {
    digest = parseDigest(pb.target.digest)
  } catch {
    return undefined
  }
  return {
    name: formatReference(reference),
    reference,
    target: { mediaType: pb.target.mediaType, digest, size: pb.target.size },
  }
}

/** The node's containerd content store, over gRPC with a direct-file fast path for reads. */
export class ContainerdStore implements Store {
  private readonly client: ContainerdClient
  private readonly log: Logger
  private readonly pool: BufferPool
  /** Media types learned from descriptors while walking images; containerd's Info does not carry them. */
  private readonly mediaTypes = new Map<Digest, string>()
  private fileReads: boolean | undefined
  private fileReadsCheckedAt = 0
  private closed = false
  /** The event stream is up and its snapshot was read: the status page and a gauge show it. */
  private streamUp = false

  constructor(
    components: ContainerdStoreComponents,
    private readonly init: ContainerdStoreInit,
  ) {
    this.log = components.logger.child({ component: 'containerd-store' })
    this.pool = components.pool ?? new BufferPool({ bufferBytes: FILE_READ_BYTES, maxFree: 16 })
    this.client = new ContainerdClient(init.address, init.namespace)
  }

  /**
   * Whether blobs can be read from files. Decided again while the answer is no: on a brand-new node the
   * content dir appears only with the first content containerd stores, and a daemon that started before
   * then must not stay on the ~7× slower gRPC path. A yes is final (the dir is never removed under us).
   */
  private async canReadFiles(): Promise<boolean> {
    if (this.fileReads === true || this.init.contentDir === undefined) return this.fileReads === true
    const now = performance.now()
    if (this.fileReads === false && now - this.fileReadsCheckedAt < FILE_READS_RECHECK_MS) return false
    this.fileReadsCheckedAt = now
    const readable = await access(
      join(this.init.contentDir, 'blobs', 'sha256'),
      constants.R_OK | constants.X_OK,
    ).then(
      () => true,
      () => false,
    )
    if (readable !== this.fileReads)
      this.log.info({ contentDir: this.init.contentDir, fileReads: readable }, 'content read path')
    this.fileReads = readable
    return readable
  }

  private blobPath(digest: Digest): string {
    return join(this.init.contentDir as string, 'blobs', 'sha256', digestHex(digest))
  }

  async images(options: AbortOptions = {}): Promise<Image[]> {
    try {
      const res = await this.client.unary(
        this.client.images.List,
        this.client.images,
        { filters: [] },
        options.signal,
      )
      return res.images.map(toImage).filter((i): i is Image => i !== undefined)
    } catch (err) {
      throw mapError(err, 'images')
    }
  }

  private async image(name: string, options: AbortOptions): Promise<Image | undefined> {
    try {
      const res = await this.client.unary(
        this.client.images.Get,
        this.client.images,
        { name },
        options.signal,
        this.init.lookupTimeoutMs ?? 1000,
      )
      return res.image === null ? undefined : toImage(res.image)
    } catch (err) {
      const mapped = mapError(err, `image ${name}`)
      if (mapped.name === 'NotFoundError') return undefined
      throw mapped
    }
  }

  async resolve(reference: Reference, options: AbortOptions = {}): Promise<Descriptor> {
    const name = formatReference({ ...reference, digest: undefined })
    // containerd keeps Docker Hub images under their normalised name, as do we
    const image = await this.image(name, options)
    if (image === undefined) throw new NotFoundError(`image ${name} not found`)
    this.mediaTypes.set(image.target.digest, image.target.mediaType)
    return image.target
  }

  async stat(digest: Digest, options: AbortOptions = {}): Promise<ContentInfo> {
    parseDigest(digest)
    let sizeBytes: number | undefined
    if (await this.canReadFiles()) {
      // committed content lives exactly here: a missing file is a miss, with no gRPC round trip
      sizeBytes = await fsStat(this.blobPath(digest)).then(
        (s) => s.size,
        (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') throw new NotFoundError(`content ${digest} not found`)
          return undefined
        },
      )
    }
    if (sizeBytes === undefined) {
      try {
        const res = await this.client.unary(
          this.client.content.Info,
          this.client.content,
          { digest },
          options.signal,
          this.init.lookupTimeoutMs ?? 1000,
        )
        if (res.info === null) throw new NotFoundError(`content ${digest} not found`)
        sizeBytes = res.info.size
      } catch (err) {
        throw mapError(err, `content ${digest}`)
      }
    }
    const info: ContentInfo = { digest, sizeBytes }
    const mediaType = this.mediaTypes.get(digest)
    if (mediaType !== undefined) info.mediaType = mediaType
    return info
  }

  async read(digest: Digest, options: ReadOptions = {}): Promise<Readable> {
    const sizeBytes = options.sizeBytes ?? (await this.stat(digest, options)).sizeBytes
    // an empty blob reads as empty; any range of it is unsatisfiable (as in the memory store)
    if (sizeBytes === 0 && options.range === undefined) return Readable.from([], { objectMode: false })
    const { start, end } = resolveRange(options.range, sizeBytes)
    if (await this.canReadFiles()) {
      try {
        return await readFileRange(this.blobPath(digest), { start, end }, this.pool, options.signal)
      } catch {
        // GC may remove the file between stat and open: fall back to gRPC, which reports NotFound properly.
        options.signal?.throwIfAborted()
      }
    }
    return this.grpcRead(digest, start, end - start + 1, options.signal)
  }

  private grpcRead(digest: Digest, offset: number, size: number, signal?: AbortSignal): Readable {
    let call: grpc.ClientReadableStream<unknown> | undefined
    let next = offset
    const end = offset + size
    const client = this.client
    const chunkBytes = this.init.grpcReadChunkBytes ?? GRPC_READ_CHUNK
    // One Read call per window keeps per-call overhead low without buffering whole blobs.
    async function* chunks(): AsyncGenerator<Buffer> {
      while (next < end) {
        signal?.throwIfAborted()
        const callStart = next
        const want = Math.min(chunkBytes, end - next)
        call = client.content.Read({ digest, offset: next, size: want }, client.metadata())
        try {
          for await (const msg of call as AsyncIterable<{ data: Buffer }>) {
            next += msg.data.length
            yield msg.data
          }
        } catch (err) {
          throw mapError(err, `content ${digest}`)
        }
        // a call that ends early (content truncated or removed mid-read) must fail, not loop forever
        if (next < callStart + want) throw new Error(`short read of ${digest} at ${next}`)
      }
    }
    const stream = Readable.from(chunks(), { objectMode: false, highWaterMark: FILE_HIGH_WATER_MARK })
    if (signal !== undefined) {
      const onAbort = (): void => {
        call?.cancel()
        stream.destroy(signal.reason as Error)
      }
      signal.addEventListener('abort', onAbort, { once: true })
      stream.once('close', () => signal.removeEventListener('abort', onAbort))
    }
    stream.once('close', () => call?.cancel())
    return stream
  }

  private async readAll(digest: Digest, options: AbortOptions): Promise<Buffer> {
    const chunks: Buffer[] = []
    for await (const c of await this.read(digest, options)) chunks.push(c as Buffer)
    return Buffer.concat(chunks)
  }

  async reachable(image: Image, options: AbortOptions = {}): Promise<Digest[]> {
    return await walkImage(
      image.target,
      {
        has: async (d, o) =>
          this.stat(d, o).then(
            () => true,
            (err: Error) => {
              if (err.name === 'NotFoundError') return false
              throw err
            },
          ),
        readAll: (d, o) => this.readAll(d, o ?? {}),
      },
      (d) => this.mediaTypes.set(d.digest, d.mediaType),
      options,
    )
  }

  async ingests(options: AbortOptions = {}): Promise<Ingest[]> {
    try {
      const res = await this.client.unary(
        this.client.content.ListStatuses,
        this.client.content,
        { filters: [] },
        options.signal,
      )
      const out: Ingest[] = []
      for (const s of res.statuses) {
        // containerd 1.6 keeps the expected digest only while the writer is open; pulls name their ingests
        // `<kind>-sha256:<hex>` (remotes.MakeRefKey), which says it too
        const expected = isDigest(s.expected) ? s.expected : /sha256:[0-9a-f]{64}$/.exec(s.ref)?.[0]
        if (expected === undefined || !isDigest(expected)) continue
        out.push({ ref: s.ref, expected, offsetBytes: s.offset, totalBytes: s.total })
      }
      return out
    } catch (err) {
      throw mapError(err, 'ingests')
    }
  }

  /**
   * containerd 1.6 keeps a download in `<contentDir>/ingest/<sha256 of "<ns>/<n>/<ref>">/data`, `<n>` a sequence
   * number it does not expose (verified: `ref` file `k8s.io/1/layer-sha256:…`, `data` growing in place). So the
   * directory is found by its `ref` file; the few ingests a node has make that scan cheap.
   */
  private async ingestDataPath(ref: string): Promise<string | undefined> {
    if (this.init.contentDir === undefined) return undefined
    const root = join(this.init.contentDir, 'ingest')
    const prefix = `${this.init.namespace}/`
    const suffix = `/${ref}`
    for (const dir of await readdir(root).catch(() => [])) {
      const owner = await readFile(join(root, dir, 'ref'), 'utf8').catch(() => '')
      if (
        owner.startsWith(prefix) &&
        owner.endsWith(suffix) &&
        /^\d+$/.test(owner.slice(prefix.length, -suffix.length))
      )
        return join(root, dir, 'data')
    }
    return undefined
  }

  async readIngest(ref: string, options: IngestReadOptions): Promise<Readable> {
    const path = await this.ingestDataPath(ref)
    if (path === undefined) throw new NotFoundError(`download ${ref} not found`)
    const { start, end } = resolveRange(options.range, options.sizeBytes)
    try {
      return await tailFile(path, {
        start,
        end,
        idleTimeoutMs: options.idleTimeoutMs,
        signal: options.signal,
      })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        throw new NotFoundError(`download ${ref} not found`)
      throw err
    }
  }

  async write(
    ref: string,
    init: { expected: Digest; sizeBytes: number },
    body: AsyncIterable<Buffer>,
    options: WriteOptions = {},
  ): Promise<void> {
    const { signal } = options
    signal?.throwIfAborted()
    const call = this.client.content.Write(this.client.metadata())
    const responses = (call as AsyncIterable<PbWriteResponse>)[Symbol.asyncIterator]()
    const onAbort = (): void => call.cancel()
    signal?.addEventListener('abort', onAbort, { once: true })
    // containerd answers every message; one at a time keeps its offset check and our memory simple
    const ask = async (req: PbWriteRequest): Promise<PbWriteResponse> => {
      call.write(req)
      const r = await responses.next()
      if (r.done === true) throw new StoreUnavailableError(`containerd ended the write of ${ref}`)
      return r.value
    }
    const total = init.sizeBytes
    const expected = init.expected
    try {
      await ask({ action: 'STAT', ref, total, expected })
      options.onOpen?.()
      // offset 0 on the first write truncates whatever an earlier, broken attempt left under this ref
      let offset = 0
      for await (const chunk of body) {
        for (let i = 0; i < chunk.length; i += WRITE_CHUNK_BYTES) {
          const data = chunk.subarray(i, i + WRITE_CHUNK_BYTES)
          offset = (await ask({ action: 'WRITE', ref, offset, data })).offset
        }
      }
      await ask({ action: 'COMMIT', ref, total, expected, offset })
      call.end()
    } catch (err) {
      call.cancel()
      if ((err as grpc.ServiceError).code === grpc.status.ALREADY_EXISTS) return
      signal?.throwIfAborted()
      throw mapError(err, `write ${ref}`)
    } finally {
      signal?.removeEventListener('abort', onAbort)
    }
  }

  async abortIngest(ref: string, options: AbortOptions = {}): Promise<void> {
    try {
      await this.client.unary(this.client.content.Abort, this.client.content, { ref }, options.signal)
    } catch (err) {
      const mapped = mapError(err, `ingest ${ref}`)
      if (mapped.name !== 'NotFoundError') throw mapped
    }
  }

  /**
   * Snapshot, then image events. containerd 1.6 publishes image events by name only, so each create/update
   * re-reads the image. When the event stream breaks (containerd restart), it reconnects with bounded
   * backoff and starts over with a fresh snapshot.
   */
  async *watch(options: AbortOptions = {}): AsyncIterable<StoreEvent> {
    const signal = options.signal
    const maxDelay = this.init.reconnectMaxDelayMs ?? 2000
    const stopped = (): boolean => signal?.aborted === true || this.closed
    let delay = 100
    while (!stopped()) {
      const call = this.client.events.Subscribe({ filters: ['topic~="^/images/"'] }, this.client.metadata())
      const onAbort = (): void => call.cancel()
      signal?.addEventListener('abort', onAbort, { once: true })
      // An error while the consumer holds the snapshot must not be unhandled; the iteration below sees it.
      call.on('error', () => undefined)
      try {
        // Subscribe first, then list: an image created in between shows up in both, never in neither.
        const images = await this.images({ signal })
        this.streamUp = true
        yield { type: 'snapshot', images }
        delay = 100
        for await (const envelope of call as AsyncIterable<PbEnvelope>) {
          if (envelope.namespace !== this.init.namespace || envelope.event === null) continue
          const name = this.client.decodeImageEventName(envelope.event.value)
          if (envelope.topic === '/images/delete') {
            const ref = toImage({
              name,
              target: { mediaType: '', digest: `sha256:${'0'.repeat(64)}`, size: 0 },
            })
            if (ref !== undefined) yield { type: 'delete', name: ref.name }
          } else if (envelope.topic === '/images/create' || envelope.topic === '/images/update') {
            const image = await this.image(name, { signal })
            if (image !== undefined)
              yield { type: envelope.topic === '/images/create' ? 'create' : 'update', image }
          }
        }
      } catch (err) {
        this.streamUp = false
        if (stopped()) break
        this.log.warn(
          { err: (err as Error).message, delayMs: delay },
          'containerd event stream broke; reconnecting',
        )
      } finally {
        this.streamUp = false
        signal?.removeEventListener('abort', onAbort)
        call.cancel()
      }
      try {
        await sleep(delay, undefined, { signal })
      } catch {
        break
      }
      delay = Math.min(delay * 2, maxDelay)
    }
  }

  /** True while `watch` holds a live event stream (false before the first snapshot and while reconnecting). */
  connected(): boolean {
    return this.streamUp && !this.closed
  }

  async close(): Promise<void> {
    this.closed = true
    this.client.close()
  }
}

export function containerdStore(
  components: ContainerdStoreComponents,
  init: ContainerdStoreInit,
): ContainerdStore {
  return new ContainerdStore(components, init)
}
