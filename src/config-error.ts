/** A setting that cannot be used: printed as one line without `error:`, exit code 2. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}
