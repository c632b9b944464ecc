/**
 * The bundle (scripts/bundle.mjs) gives @chainsafe/libp2p-noise node:crypto stand-ins for its two
 * WebAssembly packages (scripts/shims/). Nodes on the bundle and nodes on the source talk to each other, so
 * the stand-ins must produce exactly the originals' bytes and refuse exactly what they refuse.
 */
import { randomBytes } from 'node:crypto'
import { ChaCha20Poly1305 as WasmChaCha, newInstance } from '@chainsafe/as-chacha20poly1305'
import { digest as wasmDigest } from '@chainsafe/as-sha256'
import { describe, expect, it } from 'vitest'
import { ChaCha20Poly1305 } from '../../scripts/shims/as-chacha20poly1305.js'
import { digest } from '../../scripts/shims/as-sha256.js'

const hex = (b: Uint8Array | null): string | null => (b === null ? null : Buffer.from(b).toString('hex'))

describe('bundle stand-ins for the WebAssembly crypto of libp2p-noise', () => {
  const wasm = new WasmChaCha(newInstance())
  const ours = new ChaCha20Poly1305(null)

  it('seal: the same ciphertext and tag for any size, with and without associated data', () => {
    for (const size of [0, 1, 15, 16, 63, 64, 65, 1199, 1200, 4096, 70_000]) {
      const [key, nonce, text] = [randomBytes(32), randomBytes(12), randomBytes(size)]
      for (const ad of [undefined, new Uint8Array(0), randomBytes(32)]) {
        expect(hex(ours.seal(key, nonce, text, ad))).toBe(hex(wasm.seal(key, nonce, text, ad)))
      }
    }
  })

  it('open: the plaintext of a sealed message, into dst when given; null for a changed byte or tag', () => {
    const [key, nonce, text, ad] = [randomBytes(32), randomBytes(12), randomBytes(1000), randomBytes(32)]
    const sealed = wasm.seal(key, nonce, text, ad)
    expect(hex(ours.open(key, nonce, sealed, ad))).toBe(hex(text))
    const dst = new Uint8Array(text.length)
    expect(ours.open(key, nonce, sealed, ad, dst)).toBe(dst)
    expect(hex(dst)).toBe(hex(text))
    for (const at of [0, 500, sealed.length - 1]) {
      const bad = Uint8Array.from(sealed)
      bad[at]! ^= 1
      expect(ours.open(key, nonce, bad, ad)).toBeNull()
      expect(wasm.open(key, nonce, bad, ad)).toBeNull()
    }
    expect(ours.open(key, nonce, sealed, randomBytes(32))).toBeNull()
  })

  it('sha256 digest: the same bytes', () => {
    for (const size of [0, 1, 55, 56, 64, 1000, 100_000]) {
      const data = randomBytes(size)
      expect(hex(digest(data))).toBe(hex(wasmDigest(data)))
    }
  })
})
