import { createHash } from 'node:crypto'
import { Transform, type TransformCallback } from 'node:stream'
import type { Digest } from '../oci/index.js'
import { DigestMismatchError } from './errors.js'
import { BLOB_BUFFER_BYTES } from './served.js'

/**
 * Streams bytes through while hashing them, always holding back the latest chunk: the last bytes go out
 * only after the digest matched. On a mismatch the stream errors, so the client sees a short body (and
 * retries) instead of a complete, corrupt one.
 */
export class VerifyDigest extends Transform {
  private readonly hash = createHash('sha256')
  private held: Buffer | undefined
  bytes = 0

  constructor(private readonly expected: Digest) {
    super({ highWaterMark: BLOB_BUFFER_BYTES })
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk)
    this.bytes += chunk.length
    const out = this.held
    this.held = chunk
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
