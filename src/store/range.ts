import type { ByteRange } from './store.js'
import { RangeNotSatisfiableError } from './errors.js'

/** Resolves an optional inclusive range against a size: `{ start, end }` with `end` clamped to the last byte. */
export function resolveRange(
  range: ByteRange | undefined,
  sizeBytes: number,
): { start: number; end: number } {
  if (range === undefined) return { start: 0, end: sizeBytes - 1 }
  const { start } = range
  const end = Math.min(range.end ?? sizeBytes - 1, sizeBytes - 1)
  if (
    !Number.isSafeInteger(start) ||
    start < 0 ||
    start >= sizeBytes ||
    (range.end !== undefined && range.end < start)
  ) {
    throw new RangeNotSatisfiableError(
      `range ${start}-${range.end ?? ''} is outside 0-${sizeBytes - 1}`,
      sizeBytes,
    )
  }
  return { start, end }
}
