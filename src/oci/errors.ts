/** Typed errors of the pure OCI layer. Check them by `name`, never by `instanceof` across packages. */
export class InvalidDigestError extends Error {
  override name = 'InvalidDigestError'
}
export class InvalidReferenceError extends Error {
  override name = 'InvalidReferenceError'
}
export class InvalidNameError extends Error {
  override name = 'InvalidNameError'
}
export class InvalidManifestError extends Error {
  override name = 'InvalidManifestError'
}
