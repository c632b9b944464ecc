import { Readable } from 'node:stream'
import type { PeerResponse } from './peer-client.js'
import { BLOB_BUFFER_BYTES, IN_FLIGHT_HEADER } from './served.js'

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
  /**
   * A source slower than this over `floorWindowMs` of waiting for it fails like a broken one (and the body
   * resumes elsewhere): a peer trickling a byte every few seconds beats any idle timeout but would stall the
   * pull forever. Time the client spends not reading does not count. Default 1 MiB/s over 5 s.
   */
  floorBytesPerSecond?: number
  /**
   * The floor for a response served from a download still arriving (IN_FLIGHT_HEADER), default 1/8 of the
   * floor: it comes no faster than that download's source. At the full floor, a herd behind an upstream
   * slower than 1 MiB/s per blob cut its elected node off and sent every node upstream (N× the image).
   */
  inFlightFloorBytesPerSecond?: number
  floorWindowMs?: number
}

/** A peer that sends, but too slowly to finish a pull in reasonable time. */
export class PeerTooSlowError extends Error {
  override name = 'PeerTooSlowError'
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
    const fullFloor = init.floorBytesPerSecond ?? 1024 * 1024
    const windowMs = init.floorWindowMs ?? 5000
    for (;;) {
      const floor =
        current.headers[IN_FLIGHT_HEADER] === undefined
          ? fullFloor
          : (init.inFlightFloorBytesPerSecond ?? fullFloor / 8)
      // time spent waiting for this source, and what it delivered meanwhile (reset every window)
      let waitedMs = 0
      let delivered = 0
      try {
        let asked = performance.now()
        for await (const chunk of current.body) {
          const buf = chunk as Buffer
          waitedMs += performance.now() - asked
          delivered += buf.length
          if (waitedMs >= windowMs) {
            if (delivered < (floor * waitedMs) / 1000)
              throw new PeerTooSlowError(
                `peer ${current.peer.id} sent ${delivered} bytes in ${Math.round(waitedMs)} ms`,
              )
            waitedMs = 0
            delivered = 0
          }
          offset += buf.length
          yield buf
          asked = performance.now()
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
