/**
 * Works around a bug in xsalsa20 1.2, the cipher @libp2p/pnet encrypts every PSK connection with. Its
 * WebAssembly memory starts at 640 KiB; one update larger than that grows it, which detaches the memory
 * view every other cipher in the process holds, and each of those then grows the memory again on its next
 * update (it sizes the growth from its detached, empty view). Within ~1,000 updates the 64 MiB maximum is
 * reached and `RangeError: WebAssembly.Memory.grow()` is thrown inside libp2p's send path, uncaught: the
 * daemon exits. pnet hands a connection's whole queued send buffer to one update, so a backlog of
 * 640 KiB on any connection (a peer that reads slowly while key lists are sent) is enough; the scale
 * bench (bench/scale.ts) hit it at 50 nodes.
 *
 * Updates in pieces of at most 256 KiB never grow the memory (its 640 KiB also hold 64 bytes per live
 * cipher: 3,000 connections still fit). Splitting an update changes nothing in the output: salsa20 is a
 * stream cipher and xsalsa20 carries the partial block from one update to the next.
 */
import { createRequire } from 'node:module'

export const PIECE_BYTES = 256 * 1024

interface XSalsa20 {
  update(input: Uint8Array, output?: Uint8Array): Uint8Array
}

let done = false

/** Idempotent; call before the first PSK connection (KadDhtRouter.start does). */
export function boundPnetUpdates(): void {
  if (done) return
  done = true
  // the instance @libp2p/pnet uses: one copy in the tree (package.json pins the version we checked)
  const XSalsa20 = createRequire(import.meta.url)('xsalsa20') as { prototype: XSalsa20 }
  const update = XSalsa20.prototype.update
  XSalsa20.prototype.update = function (this: XSalsa20, input: Uint8Array, output?: Uint8Array): Uint8Array {
    if (input.length <= PIECE_BYTES) return update.call(this, input, output)
    const out = output ?? new Uint8Array(input.length)
    for (let i = 0; i < input.length; i += PIECE_BYTES)
      update.call(this, input.subarray(i, i + PIECE_BYTES), out.subarray(i, i + PIECE_BYTES))
    return out
  }
}
