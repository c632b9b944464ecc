import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { type Digest, isRepositoryName, isTag, parseRegistry, type Reference } from '../oci/index.js'

/** What can be looked up: a content digest, or a tag reference (`registry/repo:tag`). */
export type RoutingKey =
  { kind: 'digest'; digest: Digest } | { kind: 'tag'; registry: string; repository: string; tag: string }

export function digestKey(digest: Digest): RoutingKey {
  return { kind: 'digest', digest }
}

export function tagKey(ref: Reference): RoutingKey {
  if (ref.tag === undefined) throw new TypeError('tagKey needs a reference with a tag')
  return { kind: 'tag', registry: ref.registry, repository: ref.repository, tag: ref.tag }
}

export function keyToString(key: RoutingKey): string {
  return key.kind === 'digest' ? key.digest : `${key.registry}/${key.repository}:${key.tag}`
}

const DIGEST_KEY_RE = /^sha256:[0-9a-f]{64}$/
/** registry (≤ 255) + `/` + repository (≤ 255) + `:` + tag (≤ 128) */
export const MAX_KEY_LENGTH = 640

/**
 * Whether a string received from the network is a well-formed key: `sha256:<64 hex>` or
 * `registry/repository:tag` within the OCI length limits. Cheap; called on every key a peer sends.
 */
export function isKeyString(s: string): boolean {
  if (s.length > MAX_KEY_LENGTH) return false
  if (s.startsWith('sha256:')) return DIGEST_KEY_RE.test(s)
  const slash = s.indexOf('/')
  const colon = s.lastIndexOf(':')
  if (slash <= 0 || colon <= slash + 1) return false
  try {
    parseRegistry(s.slice(0, slash))
  } catch {
    return false
  }
  return isRepositoryName(s.slice(slash + 1, colon)) && isTag(s.slice(colon + 1))
}

/** CIDv1, raw codec, sha2-256 of the UTF-8 key string. Strings appear only at this boundary. */
export async function keyToCid(key: RoutingKey): Promise<CID> {
  const hash = await sha256.digest(new TextEncoder().encode(keyToString(key)))
  return CID.createV1(raw.code, hash)
}
