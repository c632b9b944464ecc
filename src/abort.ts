/**
 * The last parameter of every async method that may wait (style §5). A neutral module: routing, store and
 * status all take it, and none of them may depend on another for a type this small.
 */
export interface AbortOptions {
  signal?: AbortSignal
}

/** The error an aborted wait ends with: the signal's own reason when it is an Error, else an AbortError. */
export function abortError(signal: AbortSignal): Error {
  const reason = signal.reason as unknown
  if (reason instanceof Error) return reason
  const e = new Error('aborted')
  e.name = 'AbortError'
  return e
}
