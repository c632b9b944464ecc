import { type Digest, parseDigest } from './digest.js'
import { InvalidNameError, InvalidReferenceError } from './errors.js'

/** A fully normalised image reference: `registry/repository[:tag][@digest]`. */
export interface Reference {
  registry: string
  repository: string
  tag?: string
  digest?: Digest
}

export const DOCKER_HUB = 'docker.io'

// From the OCI distribution spec (and docker/distribution reference/regexp.go).
const COMPONENT = '[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*'
const NAME_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`)
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/
// host[:port], where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
const REGISTRY_RE =
  /^(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?))*|\[[A-Fa-f0-9:]+\])(?::[0-9]{1,5})?$/
const MAX_NAME_LENGTH = 255

export function isRepositoryName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME_RE.test(name)
}

export function parseRepositoryName(name: string): string {
  if (!isRepositoryName(name)) {
    throw new InvalidNameError(`invalid repository name ${JSON.stringify(name.slice(0, 300))}`)
  }
  return name
}

export function isTag(tag: string): boolean {
  return TAG_RE.test(tag)
}

/** Docker Hub answers to several names; keys and filters use one. */
export function normalizeRegistry(host: string): string {
  const h = host.toLowerCase()
  if (h === 'registry-1.docker.io' || h === 'index.docker.io' || h === 'docker.io') return DOCKER_HUB
  return h
}

export function parseRegistry(host: string): string {
  if (!REGISTRY_RE.test(host))
    throw new InvalidReferenceError(`invalid registry host ${JSON.stringify(host.slice(0, 300))}`)
  return normalizeRegistry(host)
}

/**
 * Parses a reference with Docker's normalisation: `nginx` → `docker.io/library/nginx:latest`. The first
 * path component is a registry when it holds a `.` or `:` or is `localhost`.
 */
export function parseReference(input: string): Reference {
  if (input.length === 0 || input.length > 1024)
    throw new InvalidReferenceError('reference is empty or too long')
  let rest = input
  let digest: Digest | undefined
  const at = rest.indexOf('@')
  if (at >= 0) {
    try {
      digest = parseDigest(rest.slice(at + 1))
    } catch (err) {
      throw new InvalidReferenceError(`invalid reference ${JSON.stringify(input)}: ${(err as Error).message}`)
    }
    rest = rest.slice(0, at)
  }
  let tag: string | undefined
  const colon = rest.lastIndexOf(':')
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (!isTag(tag))
      throw new InvalidReferenceError(`invalid tag ${JSON.stringify(tag)} in ${JSON.stringify(input)}`)
  }
  let registry = DOCKER_HUB
  const slash = rest.indexOf('/')
  const first = slash >= 0 ? rest.slice(0, slash) : ''
  if (slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = parseRegistry(first)
    rest = rest.slice(slash + 1)
  }
  if (registry === DOCKER_HUB && !rest.includes('/')) rest = `library/${rest}`
  if (!isRepositoryName(rest)) {
    throw new InvalidReferenceError(`invalid repository ${JSON.stringify(rest)} in ${JSON.stringify(input)}`)
  }
  if (tag === undefined && digest === undefined) tag = 'latest'
  const ref: Reference = { registry, repository: rest }
  if (tag !== undefined) ref.tag = tag
  if (digest !== undefined) ref.digest = digest
  return ref
}

export function formatReference(ref: Reference): string {
  let s = `${ref.registry}/${ref.repository}`
  if (ref.tag !== undefined) s += `:${ref.tag}`
  if (ref.digest !== undefined) s += `@${ref.digest}`
  return s
}
