import { createHash } from 'node:crypto'
import { Transform, type TransformCallback } from 'node:stream'
import type { Digest } from '../oci/index.js'
import { DigestMismatchError } from './errors.js'
import { BLOB_BUFFER_BYTES } from './served.js'

/**
 * Hashes a whole blob as it streams and passes on the bytes of `window` (inclusive offsets; default all),
 * always holding back the latest chunk: the last bytes go out only after the digest matched. On a mismatch
 * the stream errors, so the client sees a short body (and retries) instead of a complete, corrupt one. A
 * range is verified the same way: the whole blob is hashed, only the window is sent.
 */
export class VerifyDigest extends Transform {
  private readonly hash = createHash('sha256')
  private held: Buffer | undefined
  /** Bytes hashed so far. */
  bytes = 0

  constructor(
    private readonly expected: Digest,
    private readonly window: { start: number; end: number } = { start: 0, end: Infinity },
  ) {
    super({ highWaterMark: BLOB_BUFFER_BYTES })
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk)
    const offset = this.bytes
    this.bytes += chunk.length
    const from = Math.max(this.window.start - offset, 0)
    const to = Math.min(this.window.end + 1 - offset, chunk.length)
    if (to <= from) return void cb()
    const out = this.held
    this.held = from === 0 && to === chunk.length ? chunk : chunk.subarray(from, to)
    cb(null, out)
  }

  override _flush(cb: TransformCallback): void {
    const got = `sha256:${this.hash.digest('hex')}`
    if (got !== this.expected) {
      cb(new DigestMismatchError(`content digest ${got} does not match ${this.expected}`))
      return
    }
    cb(null, this.held)
  }
}

export function verifyBytes(bytes: Buffer, expected: Digest): void {
  const got = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
  if (got !== expected) throw new DigestMismatchError(`content digest ${got} does not match ${expected}`)
}
