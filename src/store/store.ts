import type { Readable } from 'node:stream'
import type { AbortOptions } from '../abort.js'
import type { Descriptor, Digest, Reference } from '../oci/index.js'

// re-exported: the store's implementations and callers name it with the rest of the Store types
export type { AbortOptions }

/** An image the node has: its normalised name and the descriptor of its root manifest or index. */
export interface Image {
  /**
   * `registry/repository:tag` as normalised by `parseReference` (e.g. `docker.io/library/nginx:latest`), or
   * `registry/repository@sha256:…` for an image pulled by digest.
   */
  name: string
  reference: Reference
  target: Descriptor
}

export interface ContentInfo {
  digest: Digest
  sizeBytes: number
  /** Known when the content is reachable from an image through a descriptor, else undefined. */
  mediaType?: string
}

/** Inclusive byte range, as in HTTP `Range: bytes=start-end`. `end` past the last byte is clamped. */
export interface ByteRange {
  start: number
  end?: number
}

export interface ReadOptions extends AbortOptions {
  range?: ByteRange
  /** The size, when the caller has just stat'ed the content: a read then costs no second stat. */
  sizeBytes?: number
}

/** A download containerd has in progress (`ctr content active`), e.g. the one a pull through the mirror writes. */
export interface Ingest {
  ref: string
  /** The digest the download must match at commit. */
  expected: Digest
  offsetBytes: number
  /** The size containerd expects (from the descriptor it pulls), 0 when unknown. */
  totalBytes: number
}

export interface IngestReadOptions extends AbortOptions {
  range?: ByteRange
  /** The size the download will have when complete (its `totalBytes`). */
  sizeBytes: number
  /** The read fails when the download grows by nothing for this long (stalled or aborted). */
  idleTimeoutMs: number
}

export interface WriteOptions extends AbortOptions {
  /** Called once the download exists, so `readIngest` can follow it while it is written. */
  onOpen?: () => void
}

export type StoreEvent =
  /** First event of every `watch`, and again after a reconnect: the full set of images now. */
  | { type: 'snapshot'; images: Image[] }
  | { type: 'create' | 'update'; image: Image }
  | { type: 'delete'; name: string }

/**
 * What this node has. Errors: `NotFoundError` (unknown image/digest), `InvalidDigestError`,
 * `RangeNotSatisfiableError` (range start past the end), `StoreUnavailableError` (backend down).
 */
export interface Store {
  images(options?: AbortOptions): Promise<Image[]>
  /** Tag reference → descriptor of the image's root (index or manifest). */
  resolve(reference: Reference, options?: AbortOptions): Promise<Descriptor>
  stat(digest: Digest, options?: AbortOptions): Promise<ContentInfo>
  /** Streams content (or a range of it). The stream errors with AbortError when the signal aborts. */
  read(digest: Digest, options?: ReadOptions): Promise<Readable>
  /** Digests reachable from the image that this store actually holds (index → manifests → config + layers). */
  reachable(image: Image, options?: AbortOptions): Promise<Digest[]>
  /** Downloads in progress. */
  ingests(options?: AbortOptions): Promise<Ingest[]>
  /**
   * Discards a download in progress, so the next pull of that content starts from byte 0 (a download that
   * received bytes failing their digest can never commit, and containerd would resume it forever).
   */
  abortIngest(ref: string, options?: AbortOptions): Promise<void>
  /**
   * Streams a download still in progress as it grows, up to `sizeBytes`: the bytes are not verified (the
   * reader checks the digest at the end). `NotFoundError` when the download is gone or cannot be read here.
   */
  readIngest(ref: string, options: IngestReadOptions): Promise<Readable>
  /**
   * Writes content under download `ref` (containerd Content/Write) and commits it once `sizeBytes` bytes
   * matching `expected` arrived; it is then ordinary content. A copy already held counts as written (and
   * `onOpen` is not called). Errors: DigestMismatch-like failures from the backend, AbortError, store errors.
   */
  write(
    ref: string,
    init: { expected: Digest; sizeBytes: number },
    body: AsyncIterable<Buffer>,
    options?: WriteOptions,
  ): Promise<void>
  /** Snapshot, then live changes, until the signal aborts. After a backend reconnect, a new snapshot. */
  watch(options?: AbortOptions): AsyncIterable<StoreEvent>
  close(): Promise<void>
}
