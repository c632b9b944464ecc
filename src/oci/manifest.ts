import { type Digest, parseDigest } from './digest.js'
import { InvalidManifestError } from './errors.js'
import { isIndexMediaType, isManifestMediaType, MediaType } from './media-types.js'

export interface Platform {
  architecture: string
  os: string
  variant?: string
}

export interface Descriptor {
  mediaType: string
  digest: Digest
  size: number
  platform?: Platform
  annotations?: Record<string, string>
}

export type ParsedManifest =
  | { kind: 'index'; mediaType: string; manifests: Descriptor[] }
  | { kind: 'manifest'; mediaType: string; config: Descriptor; layers: Descriptor[] }

function descriptor(value: unknown, where: string): Descriptor {
  if (typeof value !== 'object' || value === null) throw new InvalidManifestError(`${where}: not an object`)
  const v = value as Record<string, unknown>
  if (typeof v.mediaType !== 'string') throw new InvalidManifestError(`${where}: mediaType missing`)
  if (typeof v.digest !== 'string') throw new InvalidManifestError(`${where}: digest missing`)
  if (typeof v.size !== 'number' || !Number.isSafeInteger(v.size) || v.size < 0) {
    throw new InvalidManifestError(`${where}: size must be a non-negative integer`)
  }
  const out: Descriptor = { mediaType: v.mediaType, digest: parseDigest(v.digest), size: v.size }
  if (typeof v.platform === 'object' && v.platform !== null) {
    const p = v.platform as Record<string, unknown>
    if (typeof p.architecture === 'string' && typeof p.os === 'string') {
      out.platform = { architecture: p.architecture, os: p.os }
      if (typeof p.variant === 'string') out.platform.variant = p.variant
    }
  }
  return out
}

/**
 * Parses an image manifest or index. `mediaTypeHint` (e.g. from a descriptor or Content-Type) is used when
 * the document omits `mediaType`, which OCI allows.
 */
export function parseManifest(bytes: Uint8Array | string, mediaTypeHint?: string): ParsedManifest {
  let doc: unknown
  try {
    doc = JSON.parse(typeof bytes === 'string' ? bytes : Buffer.from(bytes).toString('utf8'))
  } catch {
    throw new InvalidManifestError('manifest is not valid JSON')
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new InvalidManifestError('manifest is not a JSON object')
  }
  const d = doc as Record<string, unknown>
  const mediaType =
    (typeof d.mediaType === 'string' ? d.mediaType : undefined) ??
    mediaTypeHint ??
    (Array.isArray(d.manifests) ? MediaType.ociIndex : MediaType.ociManifest)
  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(d.manifests)) throw new InvalidManifestError('index has no manifests array')
    return {
      kind: 'index',
      mediaType,
      manifests: d.manifests.map((m, i) => descriptor(m, `manifests[${i}]`)),
    }
  }
  if (isManifestMediaType(mediaType)) {
    if (!Array.isArray(d.layers)) throw new InvalidManifestError('manifest has no layers array')
    return {
      kind: 'manifest',
      mediaType,
      config: descriptor(d.config, 'config'),
      layers: d.layers.map((l, i) => descriptor(l, `layers[${i}]`)),
    }
  }
  throw new InvalidManifestError(`unsupported manifest media type ${JSON.stringify(mediaType)}`)
}

/** Digests a manifest or index refers to directly (children, config, layers). */
export function childDescriptors(manifest: ParsedManifest): Descriptor[] {
  return manifest.kind === 'index' ? manifest.manifests : [manifest.config, ...manifest.layers]
}
