import { Transform, type TransformCallback } from 'node:stream'
import { BufferPool } from '../buffer-pool.js'
import type { Digest } from '../oci/index.js'
import { DigestMismatchError } from './errors.js'
import type { HashJob, HashWorker } from './hash-worker.js'
import { BLOB_BUFFER_BYTES } from './served.js'

/** Un-hashed bytes allowed in flight to the worker before the relay waits for it (bounds memory). */
const MAX_UNHASHED_BYTES = 4 * 1024 * 1024

/**
 * The streaming digest check of verify.ts with the hashing on a worker thread (hash-worker.ts): the same
 * guarantee — the latest chunk is held back and the last bytes go out only after the digest matched, so
 * a corrupt body never completes — while the main thread keeps moving bytes. Each chunk stays held
 * (`BufferPool.hold`) until the worker has hashed it, so its pool buffer is not reused under the hash.
 */
export class OffThreadVerifyDigest extends Transform {
  private readonly job: HashJob
  private held: Buffer | undefined
  private unhashed = 0
  private readonly inFlight: Buffer[] = []
  private waiting: (() => void) | undefined
  private failed: Error | undefined
  bytes = 0

  constructor(
    worker: HashWorker,
    private readonly expected: Digest,
    private readonly window: { start: number; end: number } = { start: 0, end: Infinity },
  ) {
    super({ highWaterMark: BLOB_BUFFER_BYTES })
    this.job = worker.job(
      (len) => {
        this.unhashed -= len
        const done = this.inFlight.shift()
        if (done !== undefined) BufferPool.unhold(done)
        if (this.waiting !== undefined && this.unhashed <= MAX_UNHASHED_BYTES) {
          const w = this.waiting
          this.waiting = undefined
          w()
        }
      },
      (err) => {
        this.failed = err
        const w = this.waiting
        this.waiting = undefined
        w?.()
      },
    )
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.failed !== undefined) {
      cb(this.failed)
      return
    }
    BufferPool.hold(chunk)
    this.inFlight.push(chunk)
    this.job.update(chunk)
    this.unhashed += chunk.length
    const offset = this.bytes
    this.bytes += chunk.length
    // only the bytes of the window go on (a range is verified against the whole blob, as in verify.ts)
    const from = Math.max(this.window.start - offset, 0)
    const to = Math.min(this.window.end + 1 - offset, chunk.length)
    let out: Buffer | undefined
    if (to > from) {
      out = this.held
      this.held = from === 0 && to === chunk.length ? chunk : chunk.subarray(from, to)
    }
    if (this.unhashed <= MAX_UNHASHED_BYTES) {
      cb(null, out)
      return
    }
    // the worker fell behind: wait, so un-hashed (unrecyclable) buffers stay bounded
    this.waiting = () => (this.failed !== undefined ? cb(this.failed) : cb(null, out))
  }

  override _flush(cb: TransformCallback): void {
    this.job.digest().then(
      (hex) => {
        const got = `sha256:${hex}`
        if (got !== this.expected) {
          cb(new DigestMismatchError(`content digest ${got} does not match ${this.expected}`))
          return
        }
        cb(null, this.held)
      },
      (err: Error) => cb(err),
    )
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.job.cancel()
    // never recycled now: left to the garbage collector rather than reused while the worker may read them
    this.inFlight.length = 0
    cb(err)
  }
}
