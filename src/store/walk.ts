import {
  childDescriptors,
  type Descriptor,
  type Digest,
  isAnyManifestMediaType,
  parseManifest,
} from '../oci/index.js'
import type { AbortOptions } from './store.js'

/**
 * Walks index → manifests → config + layers from `root`, visiting only content the store holds (a
 * single-platform pull keeps just one manifest of an index). Calls `seen` with each descriptor found.
 */
export async function walkImage(
  root: Descriptor,
  io: {
    has(digest: Digest, options?: AbortOptions): Promise<boolean>
    readAll(digest: Digest, options?: AbortOptions): Promise<Buffer>
  },
  seen: (descriptor: Descriptor) => void,
  options: AbortOptions = {},
): Promise<Digest[]> {
  const out: Digest[] = []
  const visited = new Set<Digest>()
  const queue: Descriptor[] = [root]
  while (queue.length > 0) {
    const d = queue.shift() as Descriptor
    if (visited.has(d.digest)) continue
    visited.add(d.digest)
    options.signal?.throwIfAborted()
    if (!(await io.has(d.digest, options))) continue
    out.push(d.digest)
    seen(d)
    if (isAnyManifestMediaType(d.mediaType)) {
      try {
        queue.push(...childDescriptors(parseManifest(await io.readAll(d.digest, options), d.mediaType)))
      } catch (err) {
        if ((err as Error).name !== 'InvalidManifestError' && (err as Error).name !== 'InvalidDigestError')
          throw err
      }
    }
  }
  return out
}
