/** Typed errors of the upstream client. Tag lookups report outcomes as values; these are for config. */
export class UpstreamConfigError extends Error {
  override name = 'UpstreamConfigError'
}
