/** Typed errors of the registry layer; `errorResponse` maps every error name to an HTTP status and OCI code. */
export class PeerUnavailableError extends Error {
  override name = 'PeerUnavailableError'
}
export class DigestMismatchError extends Error {
  override name = 'DigestMismatchError'
}
export class DeadlineExceededError extends Error {
  override name = 'DeadlineExceededError'
}
export class MethodNotAllowedError extends Error {
  override name = 'MethodNotAllowedError'
}
export class ManifestNotAcceptableError extends Error {
  override name = 'ManifestNotAcceptableError'
}

export type Target = 'manifest' | 'blob' | 'other'

interface Mapping {
  status: number
  code: string | ((target: Target) => string)
}

const TABLE: Record<string, Mapping> = {
  NotFoundError: {
    status: 404,
    code: (t) => (t === 'blob' ? 'BLOB_UNKNOWN' : t === 'manifest' ? 'MANIFEST_UNKNOWN' : 'NOT_FOUND'),
  },
  // Nobody had it, or it was filtered out: a 404 so containerd moves on to the next host.
  ManifestNotAcceptableError: { status: 404, code: 'MANIFEST_UNKNOWN' },
  PeerUnavailableError: { status: 404, code: (t) => (t === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN') },
  DeadlineExceededError: { status: 404, code: (t) => (t === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN') },
  DigestMismatchError: { status: 404, code: (t) => (t === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN') },
  InvalidDigestError: { status: 400, code: 'DIGEST_INVALID' },
  InvalidNameError: { status: 400, code: 'NAME_INVALID' },
  InvalidReferenceError: {
    status: 400,
    code: (t) => (t === 'manifest' ? 'MANIFEST_INVALID' : 'NAME_INVALID'),
  },
  UnknownRouteError: { status: 404, code: 'NOT_FOUND' },
  RangeNotSatisfiableError: { status: 416, code: 'RANGE_INVALID' },
  MethodNotAllowedError: { status: 405, code: 'UNSUPPORTED' },
  // all download slots busy: containerd retries or goes to the next host, a mirror goes to another peer
  TooManyDownloadsError: { status: 503, code: 'TOOMANYREQUESTS' },
  StoreUnavailableError: { status: 404, code: (t) => (t === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN') },
}

export interface ErrorResponse {
  status: number
  body: { errors: { code: string; message: string }[] }
}

/** The one place errors become HTTP: status plus an OCI error body. Unknown errors are 500 (a bug). */
export function errorResponse(err: unknown, target: Target): ErrorResponse {
  const e = err as { name?: string; message?: string; statusCode?: number; code?: string }
  const mapping = TABLE[e.name ?? '']
  if (mapping !== undefined) {
    const code = typeof mapping.code === 'function' ? mapping.code(target) : mapping.code
    return { status: mapping.status, body: { errors: [{ code, message: e.message ?? code }] } }
  }
  // fastify's own client errors (bad headers, body too large, …) keep their 4xx status
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return {
      status: e.statusCode,
      body: { errors: [{ code: 'UNSUPPORTED', message: e.message ?? 'bad request' }] },
    }
  }
  return { status: 500, body: { errors: [{ code: 'UNKNOWN', message: 'internal error' }] } }
}
