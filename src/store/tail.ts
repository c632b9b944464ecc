import { open } from 'node:fs/promises'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { IngestStalledError } from './errors.js'

export interface TailInit {
  /** Inclusive byte offsets to stream; the file may not hold them yet. */
  start: number
  end: number
  /** Fail when the file grows by nothing for this long. */
  idleTimeoutMs: number
  signal?: AbortSignal
  /** How often to look for new bytes at the end of the file (default 20 ms). */
  pollMs?: number
  chunkBytes?: number
}

/**
 * Streams a file that another process is still writing (containerd's ingest `data`), as it grows. The file is
 * opened once: containerd commits by renaming it into `blobs/`, and an open descriptor follows the rename,
 * so a commit mid-read changes nothing. A download that stalls or is aborted (the file unlinked, never
 * growing again) ends with IngestStalledError after `idleTimeoutMs`.
 */
export async function tailFile(path: string, init: TailInit): Promise<Readable> {
  const handle = await open(path, 'r')
  const chunkBytes = init.chunkBytes ?? 1024 * 1024
  const pollMs = init.pollMs ?? 20
  async function* chunks(): AsyncGenerator<Buffer> {
    try {
      let position = init.start
      let progressAt = performance.now()
      while (position <= init.end) {
        init.signal?.throwIfAborted()
        const want = Math.min(chunkBytes, init.end + 1 - position)
        const buf = Buffer.allocUnsafe(want)
        const { bytesRead } = await handle.read(buf, 0, want, position)
        if (bytesRead > 0) {
          position += bytesRead
          progressAt = performance.now()
          yield bytesRead === want ? buf : buf.subarray(0, bytesRead)
          continue
        }
        if (performance.now() - progressAt > init.idleTimeoutMs)
          throw new IngestStalledError(`${path} did not grow for ${init.idleTimeoutMs} ms at ${position}`)
        await sleep(pollMs, undefined, { signal: init.signal })
      }
    } finally {
      await handle.close()
    }
  }
  return Readable.from(chunks(), { objectMode: false, highWaterMark: chunkBytes })
}
