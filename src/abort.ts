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

/**
 * `promise`, or a rejection with the signal's reason as soon as it aborts: for a wait on code that does not
 * honour the signal it was given promptly (kad-dht ends a query only once its in-flight requests do).
 */
export function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    // the promise may still reject (kad-dht's query ending on the same signal): handled below, never unhandled
    if (signal.aborted) {
      promise.catch(() => undefined)
      reject(abortError(signal))
      return
    }
    const onAbort = (): void => reject(abortError(signal))
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort)
        reject(err as Error)
      },
    )
  })
}
