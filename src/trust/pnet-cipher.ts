/**
 * Replaces the WebAssembly XSalsa20 of xsalsa20 1.2, the cipher @libp2p/pnet encrypts every PSK connection
 * with, by @noble/ciphers' XSalsa20 (same keystream; noble is already in the tree for noise). Two bugs in
 * the WebAssembly one end the daemon:
 * - its memory (640 KiB at first, 64 MiB at most) holds 64 bytes per cipher ever made: pnet never calls
 *   `finalize`, so every connection a node ever had keeps two slots;
 * - once one update no longer fits (a long-running node's slots, or one large write: pnet hands a
 *   connection's whole queued send buffer to one update), the memory grows, which detaches the view every
 *   other cipher holds; each of them sizes its next growth from its empty view and grows it again. Within a
 *   few hundred updates `WebAssembly.Memory.grow()` throws RangeError inside libp2p's send path, uncaught.
 * The scale bench (bench/scale.ts) hit it with 25 nodes in a process within a minute; one node would after
 * a few thousand connections in its lifetime, or at its first send backlog over ~600 KiB.
 *
 * Each cipher's key and nonce are read from its slot at its first update and the slot is freed at once; from
 * then on updates run in JavaScript, keeping the stream position (a cipher is a stream: the output of one
 * update continues where the last ended, whatever the sizes).
 *
 * A cipher that is never updated (a connection that closed before it carried a byte: refused, timed out,
 * a duplicate) still keeps its slot, and the constructor writes a new cipher's key at the next free offset
 * of a view it takes of the memory as it is: once ~10,000 such slots filled the initial 640 KiB, every new
 * cipher threw `RangeError: offset is out of bounds`, and the node could make no connection again, idle or
 * not (the 200-node scale run: 8 of 50 nodes in a process never joined, others failed every new
 * subscription). So at each cipher's first update the memory is grown ahead of the highest slot seen, by
 * 1 MiB (16,384 slots) at a time (WebAssembly memory only grows; 64 MiB at most, a million slots), and a key
 * is read through the newest view of the memory (a growth leaves the older views empty).
 */
import { xsalsa20 } from '@noble/ciphers/salsa.js'
// the module @libp2p/pnet imports, the same way: in the bundle (scripts/bundle.mjs) a require() from here
// would load a second copy from node_modules, and pnet's own would stay unpatched
import XSalsa20Module from 'xsalsa20'

interface WasmState {
  _memory?: Uint8Array
  _nonce: number
  _key: number
  finalize(): void
  /** grows the WebAssembly memory to at least `size` bytes and takes a new view of it */
  realloc(size: number): void
}

const GROW_BYTES = 1024 * 1024
const MAX_MEMORY = 64 * 1024 * 1024

interface XSalsa20 {
  _xor: WasmState | null
  update(input: Uint8Array, output?: Uint8Array): Uint8Array
}

interface Stream {
  key: Uint8Array
  nonce: Uint8Array
  /** bytes of keystream used so far */
  offset: number
}

let done = false

/** Idempotent; call before the first PSK connection (KadDhtRouter.start does). */
export function replacePnetCipher(): void {
  if (done) return
  done = true
  // the instance @libp2p/pnet uses: one copy in the tree (package.json pins the version this was checked on)
  const XSalsa20 = XSalsa20Module as { prototype: XSalsa20 }
  const wasmUpdate = XSalsa20.prototype.update
  const streams = new WeakMap<XSalsa20, Stream>()
  /** the newest view of the WebAssembly memory (the cipher that grew it holds it too) */
  let view: Uint8Array | undefined
  XSalsa20.prototype.update = function (this: XSalsa20, input: Uint8Array, output?: Uint8Array): Uint8Array {
    let s = streams.get(this)
    if (s === undefined) {
      const x = this._xor
      if (x == null || x._memory === undefined) return wasmUpdate.call(this, input, output)
      if (view === undefined || x._memory.length > view.length) view = x._memory
      // a view taken before a growth is empty: the memory (and this cipher's slot) is the same
      const m = x._memory.length > 0 ? x._memory : view
      // an unexpected layout: leave it as it is
      if (m.length < x._key + 32) return wasmUpdate.call(this, input, output)
      s = { key: m.slice(x._key, x._key + 32), nonce: m.slice(x._nonce, x._nonce + 24), offset: 0 }
      x._memory = m
      // room for the slots of the ciphers made before the next first update (never updated ones included)
      if (x._key + 64 * 1024 > m.length && m.length < MAX_MEMORY) {
        x.realloc(Math.min(MAX_MEMORY, m.length + GROW_BYTES))
        view = x._memory
      }
      x.finalize() // the slot is free for the next cipher
      streams.set(this, s)
    }
    const out = output ?? new Uint8Array(input.length)
    if (input.length === 0) return out
    const skip = s.offset % 64
    const block = Math.floor(s.offset / 64)
    if (skip === 0) {
      out.set(xsalsa20(s.key, s.nonce, input, undefined, block))
    } else {
      // continue inside a 64-byte block: encrypt from the block's start and drop what was used already
      const padded = new Uint8Array(skip + input.length)
      padded.set(input, skip)
      out.set(xsalsa20(s.key, s.nonce, padded, undefined, block).subarray(skip))
    }
    s.offset += input.length
    return out
  }
}
