/**
 * The bundle's stand-in for `@chainsafe/as-sha256` (scripts/bundle.mjs), which only
 * @chainsafe/libp2p-noise imports: `digest` on node:crypto. Why: see ./as-chacha20poly1305.ts.
 */
import { createHash } from 'node:crypto'

export function digest(data: Uint8Array): Uint8Array {
  const hash = createHash('sha256').update(data).digest()
  return new Uint8Array(hash.buffer, hash.byteOffset, hash.byteLength)
}
