/**
 * The bundle's stand-in for `@chainsafe/as-chacha20poly1305` (scripts/bundle.mjs), which only
 * @chainsafe/libp2p-noise imports, for messages under 1,200 bytes. The same seal/open, on node:crypto's
 * ChaCha20-Poly1305 (the noise package uses it for larger messages already). Why: the package is a
 * WebAssembly module, instantiated when noise is imported; compiling and tiering it up kept ~5 MiB of an
 * idle daemon's RSS (V8's wasm compilers' pages and the module's memory; bench/memory.ts), for the DHT's
 * few small messages a second.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto'

const TAG_LENGTH = 16

/** No WebAssembly instance: the context is unused. */
export function newInstance(): null {
  return null
}

export class ChaCha20Poly1305 {
  constructor(_ctx?: unknown) {}

  /** `plaintext` encrypted, then the 16-byte tag; into `dst` when given (its length must match). */
  seal(
    key: Uint8Array,
    nonce: Uint8Array,
    plaintext: Uint8Array,
    associatedData?: Uint8Array,
    dst?: Uint8Array,
  ): Uint8Array {
    const cipher = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_LENGTH })
    if (associatedData !== undefined) cipher.setAAD(associatedData, { plaintextLength: plaintext.byteLength })
    const body = cipher.update(plaintext)
    const final = cipher.final()
    const tag = cipher.getAuthTag()
    const length = body.byteLength + final.byteLength + TAG_LENGTH
    if (dst !== undefined && dst.length !== length)
      throw new Error('ChaCha20Poly1305: incorrect destination length')
    const out = dst ?? new Uint8Array(length)
    out.set(body, 0)
    out.set(final, body.byteLength)
    out.set(tag, body.byteLength + final.byteLength)
    return out
  }

  /** The plaintext of `sealed` (ciphertext, then tag), or null when the tag does not match. */
  open(
    key: Uint8Array,
    nonce: Uint8Array,
    sealed: Uint8Array,
    associatedData?: Uint8Array,
    dst?: Uint8Array,
  ): Uint8Array | null {
    if (sealed.length < TAG_LENGTH) return null
    const text = sealed.subarray(0, sealed.length - TAG_LENGTH)
    if (dst !== undefined && dst.length !== text.length)
      throw new Error('ChaCha20Poly1305: incorrect destination length')
    const decipher = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_LENGTH })
    if (associatedData !== undefined) decipher.setAAD(associatedData, { plaintextLength: text.byteLength })
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_LENGTH))
    const body = decipher.update(text)
    try {
      decipher.final() // throws when the tag does not match; ChaCha20 is a stream cipher, nothing is left
    } catch {
      return null
    }
    if (dst === undefined) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength)
    dst.set(body)
    return dst
  }
}
