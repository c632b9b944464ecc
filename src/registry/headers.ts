import { RangeNotSatisfiableError } from '../store/errors.js'
import type { ByteRange } from '../store/store.js'

export interface ContentHeadersInit {
  digest: string
  mediaType: string
  sizeBytes: number
}

/** Headers for a full response: containerd requires all three on a manifest HEAD. */
export function contentHeaders(d: ContentHeadersInit): Record<string, string> {
  return {
    'docker-content-digest': d.digest,
    'content-type': d.mediaType,
    'content-length': String(d.sizeBytes),
    'accept-ranges': 'bytes',
    etag: `"${d.digest}"`,
  }
}

/** Headers for a 206 over `[start, end]` (inclusive). */
export function partialHeaders(d: ContentHeadersInit, start: number, end: number): Record<string, string> {
  return {
    ...contentHeaders(d),
    'content-length': String(end - start + 1),
    'content-range': `bytes ${start}-${end}/${d.sizeBytes}`,
  }
}

/**
 * Parses a `Range` header against a size. Only one `bytes=` range is supported (registries do the same);
 * a malformed header is ignored (full response, as RFC 9110 allows), an unsatisfiable one throws.
 */
export function parseRangeHeader(header: string | undefined, sizeBytes: number): ByteRange | undefined {
  if (header === undefined) return undefined
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (m === null || (m[1] === '' && m[2] === '')) return undefined
  let start: number
  let end: number
  if (m[1] === '') {
    // suffix range: the last N bytes
    const n = Number(m[2])
    if (n === 0) throw new RangeNotSatisfiableError(`range ${header} is empty`, sizeBytes)
    start = Math.max(0, sizeBytes - n)
    end = sizeBytes - 1
  } else {
    start = Number(m[1])
    end = m[2] === '' ? sizeBytes - 1 : Math.min(Number(m[2]), sizeBytes - 1)
  }
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start >= sizeBytes || end < start) {
    throw new RangeNotSatisfiableError(`range ${header} is outside 0-${sizeBytes - 1}`, sizeBytes)
  }
  return { start, end }
}
