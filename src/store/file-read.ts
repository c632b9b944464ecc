import { type FileHandle, open } from 'node:fs/promises'
import { addAbortSignal, Readable } from 'node:stream'
import type { BufferPool } from '../buffer-pool.js'

/**
 * Opens `path` and streams bytes `start..end` (inclusive) in pool buffers. Unlike `fs.createReadStream`,
 * which allocates a new buffer for every read, each chunk is a lent pool view that the HTTP response hands
 * back once written (see buffer-pool.ts), so serving a blob allocates almost nothing. Rejects (ENOENT) when
 * the file is gone, so the caller can fall back.
 */
export async function readFileRange(
  path: string,
  range: { start: number; end: number },
  pool: BufferPool,
  signal?: AbortSignal,
): Promise<Readable> {
  signal?.throwIfAborted()
  const file = await open(path, 'r')
  if (signal?.aborted === true) {
    await file.close()
    signal.throwIfAborted()
  }
  return new FileRangeStream(file, range, pool, signal)
}

class FileRangeStream extends Readable {
  private position: number
  private reading = false

  constructor(
    private readonly file: FileHandle,
    private readonly range: { start: number; end: number },
    private readonly pool: BufferPool,
    signal?: AbortSignal,
  ) {
    // Two chunks of read-ahead: the next read runs while the socket writes the last one.
    super({ highWaterMark: 2 * pool.bufferBytes })
    this.position = range.start
    // not through super(): a signal that fires there would destroy the stream before `file` is set
    if (signal !== undefined) addAbortSignal(signal, this)
  }

  override _read(): void {
    if (this.reading) return
    const want = Math.min(this.pool.bufferBytes, this.range.end + 1 - this.position)
    if (want <= 0) {
      this.push(null)
      return
    }
    this.reading = true
    // a pool buffer only for full-size reads: a manifest or the tail of a blob gets an exact-size buffer
    // (a 1 MiB pool buffer held for a 1 KiB manifest bloated RSS while indexing ~1,000 small blobs)
    const pooled = want === this.pool.bufferBytes
    const buf = pooled ? this.pool.take() : Buffer.allocUnsafe(want)
    this.file.read(buf, 0, want, this.position).then(
      ({ bytesRead }) => {
        this.reading = false
        if (this.destroyed) return
        if (bytesRead === 0) {
          if (pooled) this.pool.giveBack(buf)
          this.destroy(new Error(`file ended at ${this.position}, before byte ${this.range.end}`))
          return
        }
        this.position += bytesRead
        const chunk = buf.subarray(0, bytesRead)
        const more = this.push(pooled ? this.pool.lend(chunk) : chunk)
        if (this.position > this.range.end) this.push(null)
        else if (more) this._read()
      },
      (err: Error) => {
        this.reading = false
        this.destroy(err)
      },
    )
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.file.close().then(
      () => cb(err),
      () => cb(err),
    )
  }
}
