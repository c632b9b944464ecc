import { Readable } from 'node:stream'
import type { PeerResponse } from './peer-client.js'
import { BLOB_BUFFER_BYTES } from './served.js'

export interface ResumeInit {
  first: PeerResponse
  /** Absolute offset of the first response's first byte, and the last byte wanted (inclusive). */
  start: number
  end: number
  /** Opens `Range: bytes=offset-end` at another peer; undefined when no peer is left. */
  reopen(offset: number, signal: AbortSignal): Promise<PeerResponse | undefined>
  signal: AbortSignal
  maxResumes?: number
  onResume?(from: PeerResponse, offset: number, err: unknown): void
}

/**
 * One body made of peer responses: counts bytes sent, and when a source fails (reset, idle timeout, short
 * body) continues at the next peer with `Range` from the byte where it stopped. The caller's digest check
 * sees one continuous stream.
 */
export function resumableBody(init: ResumeInit): Readable {
  async function* chunks(): AsyncGenerator<Buffer> {
    let current = init.first
    let offset = init.start
    let resumes = 0
    for (;;) {
      try {
        for await (const chunk of current.body) {
          const buf = chunk as Buffer
          offset += buf.length
          yield buf
        }
        if (offset > init.end) return
        throw new Error(`short body from peer ${current.peer.id}: ended at ${offset}, want ${init.end + 1}`)
      } catch (err) {
        current.body.destroy()
        if (init.signal.aborted || resumes >= (init.maxResumes ?? 5)) throw err
        init.onResume?.(current, offset, err)
        const next = await init.reopen(offset, init.signal)
        if (next === undefined) throw err
        resumes++
        current = next
      }
    }
  }
  const stream = Readable.from(chunks(), { objectMode: false, highWaterMark: BLOB_BUFFER_BYTES })
  return stream
}

/**
 * Checks a resumed response really starts where we stopped and is of the same blob size:
 * `Content-Range: bytes <offset>-…/<size>`.
 */
export function startsAt(res: PeerResponse, offset: number, sizeBytes: number): boolean {
  if (offset === 0 && res.status === 200) return Number(res.headers['content-length']) === sizeBytes
  const m = /^bytes (\d+)-\d+\/(\d+)$/.exec(res.headers['content-range'] ?? '')
  return res.status === 206 && m !== null && Number(m[1]) === offset && Number(m[2]) === sizeBytes
}
