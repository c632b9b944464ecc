import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import type { Digest, Reference } from '../oci/index.js'

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

/** CIDv1, raw codec, sha2-256 of the UTF-8 key string. Strings appear only at this boundary. */
export async function keyToCid(key: RoutingKey): Promise<CID> {
  const hash = await sha256.digest(new TextEncoder().encode(keyToString(key)))
  return CID.createV1(raw.code, hash)
}
