/**
 * Reusable buffers for the blob path. Why: reading a blob into a fresh 1–4 MiB buffer per chunk made the
 * garbage collector the largest single cost of serving (25 % of CPU in a `--cpu-prof` of the peer endpoint
 * with the daemon's 1 MiB young generation), plus page faults on every new buffer. Reusing a few buffers
 * removes both and bounds the memory one download holds.
 *
 * A producer (file read, peer socket read) `take()`s a buffer, fills it and emits one view of it with
 * `lend(view)`. The final consumer (the HTTP response) calls `recycle(view)` once the socket has written
 * it. A view is taken back only when it is exactly the one lent (same offset and length): if a stream
 * stage in between sliced or concatenated chunks, the pieces are simply left to the garbage collector,
 * never reused while someone may still read them. A lent view that is never recycled (an aborted
 * download) is garbage collected too.
 */

/** Which pool lent a buffer, and the exact view it lent. Ownership only: no configuration lives here. */
const lent = new WeakMap<ArrayBufferLike, Lent>()

interface Lent {
  pool: BufferPool
  offset: number
  length: number
  /** Readers besides the response (the hash worker) that still need the bytes. */
  holds: number
  written: boolean
}

export interface BufferPoolInit {
  /** Size of each buffer. */
  bufferBytes: number
  /** Buffers kept for reuse at most; more in flight are allocated and left to the GC when returned. */
  maxFree: number
  /** Free buffers are dropped after this long without a `take()` (the idle daemon keeps none). */
  idleTrimMs?: number
}

export class BufferPool {
  private free: Buffer[] = []
  private lastTake = 0
  private trimTimer: NodeJS.Timeout | undefined

  constructor(readonly init: BufferPoolInit) {}

  get bufferBytes(): number {
    return this.init.bufferBytes
  }

  /** Buffers currently kept for reuse. */
  get freeCount(): number {
    return this.free.length
  }

  /** A buffer of `bufferBytes` (contents undefined) to fill and then `lend()` one view of. */
  take(): Buffer {
    this.lastTake = performance.now()
    // A plain ArrayBuffer, never a SharedArrayBuffer: V8 counts these as external memory, so a dropped one
    // is collected soon. (Tried for hashing on a worker thread: dropped SharedArrayBuffers were not counted,
    // and 16 parallel relays piled up 2 GiB of them before a GC.)
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.init.bufferBytes)
  }

  /** Records the view of a taken buffer that goes downstream; returns it. */
  lend(view: Buffer): Buffer {
    lent.set(view.buffer, {
      pool: this,
      offset: view.byteOffset,
      length: view.byteLength,
      holds: 0,
      written: false,
    })
    return view
  }

  /** Returns a taken buffer that was never lent (e.g. a read that got no bytes). */
  giveBack(buf: Buffer): void {
    if (buf.byteLength !== this.init.bufferBytes || lent.has(buf.buffer)) return
    this.keep(buf)
  }

  /** @internal */
  keep(buf: Buffer): void {
    if (this.free.length >= this.init.maxFree) return
    this.free.push(buf)
    if (this.trimTimer === undefined) {
      const idle = this.init.idleTrimMs ?? 5000
      const check = (): void => {
        if (performance.now() - this.lastTake >= idle) {
          this.free = []
          this.trimTimer = undefined
        } else {
          this.trimTimer = setTimeout(check, idle).unref()
        }
      }
      this.trimTimer = setTimeout(check, idle).unref()
    }
  }

  /** Back to its pool once written, if `chunk` is exactly a lent view (and no reader holds it). */
  static recycle(chunk: Uint8Array): void {
    const l = lentView(chunk)
    if (l === undefined || l.written) return
    l.written = true
    if (l.holds === 0) release(chunk, l)
  }

  /** Another reader (the hash worker) needs the bytes of a lent view until `unhold`. */
  static hold(chunk: Uint8Array): void {
    const l = lentView(chunk)
    if (l !== undefined) l.holds++
  }

  static unhold(chunk: Uint8Array): void {
    const l = lentView(chunk)
    if (l === undefined || l.holds === 0) return
    l.holds--
    if (l.holds === 0 && l.written) release(chunk, l)
  }
}

function lentView(chunk: Uint8Array): Lent | undefined {
  const l = lent.get(chunk.buffer)
  return l !== undefined && l.offset === chunk.byteOffset && l.length === chunk.byteLength ? l : undefined
}

function release(chunk: Uint8Array, l: Lent): void {
  lent.delete(chunk.buffer)
  if (chunk.buffer.byteLength !== l.pool.init.bufferBytes) return
  l.pool.keep(Buffer.from(chunk.buffer as ArrayBuffer, 0, chunk.buffer.byteLength))
}

export function bufferPool(init: BufferPoolInit): BufferPool {
  return new BufferPool(init)
}
