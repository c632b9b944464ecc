/**
 * xsalsa20 (the PSK cipher of @libp2p/pnet) crashed the process once one update exceeded its 640 KiB of
 * WebAssembly memory and other ciphers kept encrypting (src/trust/pnet-pieces.ts). With updates bounded,
 * the same sequence runs through and every byte still decrypts.
 */
import { createRequire } from 'node:module'
import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { boundPnetUpdates } from '../../src/trust/pnet-pieces.js'

type Cipher = { update(input: Uint8Array, output?: Uint8Array): Uint8Array }
const XSalsa20 = createRequire(import.meta.url)('xsalsa20') as (nonce: Uint8Array, key: Uint8Array) => Cipher

describe('PSK cipher updates', () => {
  it('a 1 MiB update, then thousands of small ones on other ciphers: no crash, every byte round-trips', () => {
    boundPnetUpdates()
    const key = randomBytes(32)
    const nonces = Array.from({ length: 4 }, () => randomBytes(24))
    const senders = nonces.map((n) => XSalsa20(n, key))
    const receivers = nonces.map((n) => XSalsa20(n, key))
    const big = randomBytes(1024 * 1024)
    expect(Buffer.from(receivers[0]!.update(senders[0]!.update(big)))).toEqual(big)
    for (let i = 0; i < 5_000; i++) {
      const j = i % nonces.length
      const data = randomBytes(1 + (i % 3000))
      expect(Buffer.from(receivers[j]!.update(senders[j]!.update(data)))).toEqual(data)
    }
  })
})
