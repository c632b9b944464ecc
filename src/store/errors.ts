/** Typed Store errors. The registry maps them to OCI codes by `name`; the store never knows HTTP. */
export class NotFoundError extends Error {
  override name = 'NotFoundError'
}
export class RangeNotSatisfiableError extends Error {
  override name = 'RangeNotSatisfiableError'
  constructor(
    message: string,
    readonly sizeBytes: number,
  ) {
    super(message)
  }
}
/** The backend (containerd) cannot be reached right now; callers may retry. */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError'
}
/** A download in progress stopped growing (stalled, or aborted and removed). */
export class IngestStalledError extends Error {
  override name = 'IngestStalledError'
}
