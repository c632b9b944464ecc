import { type Digest, isDigest, parseDigest } from './digest.js'
import { InvalidNameError, InvalidReferenceError } from './errors.js'
import { DOCKER_HUB, isRepositoryName, isTag, parseRegistry } from './reference.js'

/** A request on the OCI distribution read API, parsed from the path and `?ns=` (containerd's mirror hint). */
export type DistributionRequest =
  | { kind: 'base' }
  | {
      kind: 'manifest'
      registry: string
      repository: string
      reference: { tag: string } | { digest: Digest }
    }
  | { kind: 'blob'; registry: string; repository: string; reference: { digest: Digest } }

export class UnknownRouteError extends Error {
  override name = 'UnknownRouteError'
}

/**
 * Parses `/v2/`, `/v2/<name>/manifests/<ref>` and `/v2/<name>/blobs/<digest>`. Repository names contain
 * slashes, so this looks for the last `/manifests/` or `/blobs/` segment. Takes strings, not a request
 * object, so it can be fuzzed directly.
 */
export function parseDistributionPath(path: string, ns?: string): DistributionRequest {
  const q = path.indexOf('?')
  if (q >= 0) path = path.slice(0, q)
  if (path === '/v2' || path === '/v2/') return { kind: 'base' }
  if (!path.startsWith('/v2/')) throw new UnknownRouteError(`unknown path`)
  const rest = path.slice('/v2/'.length)
  const m = /^(.+)\/(manifests|blobs)\/([^/]+)$/.exec(rest)
  if (m === null) throw new UnknownRouteError('unknown path')
  const [, repository, what, ref] = m as unknown as [string, string, 'manifests' | 'blobs', string]
  if (!isRepositoryName(repository)) throw new InvalidNameError('invalid repository name')
  const registry = ns === undefined || ns === '' ? DOCKER_HUB : parseRegistry(ns)
  if (what === 'blobs') {
    return { kind: 'blob', registry, repository, reference: { digest: parseDigest(ref) } }
  }
  if (isDigest(ref)) return { kind: 'manifest', registry, repository, reference: { digest: ref } }
  if (ref.startsWith('sha256:') || ref.includes(':'))
    return { kind: 'manifest', registry, repository, reference: { digest: parseDigest(ref) } }
  if (!isTag(ref)) throw new InvalidReferenceError('invalid tag')
  return { kind: 'manifest', registry, repository, reference: { tag: ref } }
}
