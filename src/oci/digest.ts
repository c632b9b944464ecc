import { createHash } from 'node:crypto'
import { InvalidDigestError } from './errors.js'

/** `sha256:<64 lowercase hex>`. Only `parseDigest` and `digestOf` make one. */
export type Digest = string & { readonly __brand: 'Digest' }

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/

export function isDigest(value: string): value is Digest {
  return DIGEST_RE.test(value)
}

export function parseDigest(value: string): Digest {
  if (!isDigest(value)) {
    throw new InvalidDigestError(
      `invalid digest ${JSON.stringify(value.slice(0, 100))}: want sha256:<64 lowercase hex>`,
    )
  }
  return value
}

/** The hex part, used for content-store paths. */
export function digestHex(digest: Digest): string {
  return digest.slice('sha256:'.length)
}

export function digestOf(data: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}` as Digest
}
