/**
 * xsalsa20's WebAssembly cipher (used by @libp2p/pnet for the PSK) crashed the process: one update larger
 * than its memory, or a few thousand ciphers made in a process's life, and the others grew the memory until
 * RangeError (src/trust/pnet-cipher.ts). With the replacement the same sequences run through, and the bytes
 * are exactly what the WebAssembly cipher produces (peers on either implementation interoperate).
 */
import { createRequire } from 'node:module'
import { randomBytes } from 'node:crypto'
import { xsalsa20 } from '@noble/ciphers/salsa.js'
import { describe, expect, it } from 'vitest'
import { replacePnetCipher } from '../../src/trust/pnet-cipher.js'

type Cipher = { update(input: Uint8Array, output?: Uint8Array): Uint8Array }
const XSalsa20 = createRequire(import.meta.url)('xsalsa20') as ((
  nonce: Uint8Array,
  key: Uint8Array,
) => Cipher) & {
  prototype: Cipher
}
// the WebAssembly update, before the replacement: the reference for the keystream
const wasmUpdate = XSalsa20.prototype.update

describe('PSK cipher', () => {
  it('produces the WebAssembly cipher’s bytes for any split of the stream', () => {
    const key = randomBytes(32)
    const nonce = randomBytes(24)
    const reference = XSalsa20(nonce, key)
    replacePnetCipher()
    const ours = XSalsa20(nonce, key)
    for (const size of [1, 63, 64, 65, 7, 1000, 4096, 13, 64 * 1024 + 3, 0, 5]) {
      const data = randomBytes(size)
      expect(Buffer.from(ours.update(data)).equals(Buffer.from(wasmUpdate.call(reference, data)))).toBe(true)
    }
  })

  it('a 1 MiB update, then a thousand small ones on other ciphers: no crash, every byte round-trips', () => {
    replacePnetCipher()
    const key = randomBytes(32)
    const nonces = Array.from({ length: 4 }, () => randomBytes(24))
    const senders = nonces.map((n) => XSalsa20(n, key))
    const receivers = nonces.map((n) => XSalsa20(n, key))
    const big = randomBytes(1024 * 1024)
    // Buffer.equals: toEqual compares a MiB element by element for seconds
    expect(Buffer.from(receivers[0]!.update(senders[0]!.update(big))).equals(big)).toBe(true)
    for (let i = 0; i < 1_000; i++) {
      const j = i % nonces.length
      const data = randomBytes(1 + (i % 3000))
      expect(Buffer.from(receivers[j]!.update(senders[j]!.update(data))).equals(data)).toBe(true)
    }
  })

  it('20,000 ciphers made over a process’s life, never finalized, while older ones keep sending: no crash', () => {
    replacePnetCipher()
    const key = randomBytes(32)
    const early = Array.from({ length: 4 }, () => XSalsa20(randomBytes(24), key))
    for (const c of early) c.update(randomBytes(10))
    for (let i = 0; i < 20_000; i++) XSalsa20(randomBytes(24), key).update(randomBytes(100))
    for (let i = 0; i < 4_000; i++) early[i % 4]!.update(randomBytes(100))
  })

  it('40,000 ciphers of which 9 in 10 never carry a byte (connections refused or closed early): no crash, right bytes', () => {
    replacePnetCipher()
    const key = randomBytes(32)
    for (let i = 0; i < 40_000; i++) {
      const nonce = randomBytes(24)
      const c = XSalsa20(nonce, key)
      if (i % 10 !== 0) continue
      const data = randomBytes(1 + (i % 200))
      expect(Buffer.from(c.update(data)).equals(Buffer.from(xsalsa20(key, nonce, data)))).toBe(true)
    }
  })
})
