import {
  acceptsMediaType,
  type DistributionRequest,
  type Digest,
  isAnyManifestMediaType,
  parseManifest,
} from '../oci/index.js'
import { digestKey, type RoutingKey, tagKey } from '../routing/keys.js'
import { NotFoundError } from '../store/errors.js'
import type { Ingest, Store } from '../store/store.js'
import { ManifestNotAcceptableError } from './errors.js'
import { contentHeaders, parseRangeHeader, partialHeaders } from './headers.js'
import type { Served } from './served.js'

type ContentRequest = Extract<DistributionRequest, { kind: 'manifest' | 'blob' }>

export interface ClientRequest {
  method: 'GET' | 'HEAD'
  accept?: string
  range?: string
  signal: AbortSignal
}

// Manifests are small (registries cap them at 4 MiB); anything bigger is not served as a manifest.
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024

async function readAll(
  store: Store,
  digest: Digest,
  sizeBytes: number,
  signal: AbortSignal,
): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of await store.read(digest, { signal, sizeBytes })) chunks.push(c as Buffer)
  return Buffer.concat(chunks)
}

/** The media type of a manifest the store holds, from the store or else from the document itself. */
async function manifestMediaType(
  known: string | undefined,
  bytes: () => Promise<Buffer>,
): Promise<string | undefined> {
  if (isAnyManifestMediaType(known)) return known
  try {
    return parseManifest(await bytes()).mediaType
  } catch {
    return undefined // not a manifest (a layer or config asked for on /manifests/)
  }
}

/** Whether this node advertises a key: its own images, after the filters, in its containerd namespace. */
export type Advertises = (key: RoutingKey) => boolean

function notServed(what: string): NotFoundError {
  return new NotFoundError(`${what} not found`)
}

/**
 * Serves a request from this node's store, but only content this node advertises: never a digest of an
 * excluded image asked for under another name, nor another namespace's blob that the content dir happens to
 * hold. Throws NotFoundError (typed, from the store) when the node does not hold it, so callers decide
 * whether to try peers.
 */
export async function serveLocal(
  store: Store,
  advertises: Advertises,
  req: ContentRequest,
  client: ClientRequest,
): Promise<Served> {
  const { signal } = client
  if ('tag' in req.reference) {
    const ref = { registry: req.registry, repository: req.repository, tag: req.reference.tag }
    if (!advertises(tagKey(ref))) throw notServed(`manifest ${req.reference.tag}`)
  } else if (!advertises(digestKey(req.reference.digest))) {
    throw notServed(`${req.kind} ${req.reference.digest}`)
  }
  if (req.kind === 'manifest') {
    let digest: Digest
    let mediaType: string | undefined
    if ('tag' in req.reference) {
      const d = await store.resolve(
        { registry: req.registry, repository: req.repository, tag: req.reference.tag },
        { signal },
      )
      digest = d.digest
      mediaType = d.mediaType
      if (!advertises(digestKey(digest))) throw notServed(`manifest ${digest}`)
    } else {
      digest = req.reference.digest
    }
    const info = await store.stat(digest, { signal })
    mediaType ??= info.mediaType
    if (info.sizeBytes > MAX_MANIFEST_BYTES)
      throw new ManifestNotAcceptableError(`${digest} is too large for a manifest`)
    let bytes: Buffer | undefined
    const load = async (): Promise<Buffer> => (bytes ??= await readAll(store, digest, info.sizeBytes, signal))
    mediaType = await manifestMediaType(mediaType, load)
    if (mediaType === undefined) throw new ManifestNotAcceptableError(`${digest} is not a manifest`)
    if (!acceptsMediaType(client.accept, mediaType)) {
      throw new ManifestNotAcceptableError(
        `manifest ${digest} is ${mediaType}, which the client does not accept`,
      )
    }
    const headers = contentHeaders({ digest, mediaType, sizeBytes: info.sizeBytes })
    return {
      source: 'local',
      status: 200,
      headers,
      digest,
      body: client.method === 'GET' ? await load() : undefined,
    }
  }

  const digest = req.reference.digest
  // one stat: its size goes to the read, which would otherwise stat again
  const info = await store.stat(digest, { signal })
  const sizeBytes = info.sizeBytes
  const d = { digest, mediaType: 'application/octet-stream', sizeBytes }
  const range = info.sizeBytes === 0 ? undefined : parseRangeHeader(client.range, info.sizeBytes)
  if (range === undefined) {
    const body = client.method === 'GET' ? await store.read(digest, { signal, sizeBytes }) : undefined
    return { source: 'local', status: 200, headers: contentHeaders(d), digest, body }
  }
  const end = range.end ?? sizeBytes - 1
  const body = client.method === 'GET' ? await store.read(digest, { signal, range, sizeBytes }) : undefined
  return { source: 'local', status: 206, headers: partialHeaders(d, range.start, end), digest, body }
}

/**
 * Serves a blob this node is still downloading, from the growing file (store.readIngest): the length is the
 * size containerd expects, and the bytes are not verified here — the fetching node checks the digest, as it
 * does for every peer body. A download that stops growing for `idleTimeoutMs` ends the body short.
 */
export async function serveInFlight(
  store: Store,
  ingest: Ingest,
  client: ClientRequest,
  idleTimeoutMs: number,
): Promise<Served> {
  const digest = ingest.expected
  const sizeBytes = ingest.totalBytes
  const d = { digest, mediaType: 'application/octet-stream', sizeBytes }
  const range = parseRangeHeader(client.range, sizeBytes)
  const read = async (r?: { start: number; end?: number }) =>
    client.method === 'GET'
      ? await store.readIngest(ingest.ref, { signal: client.signal, range: r, sizeBytes, idleTimeoutMs })
      : undefined
  if (range === undefined) {
    return {
      source: 'local',
      status: 200,
      headers: contentHeaders(d),
      digest,
      body: await read(),
      inFlight: true,
    }
  }
  const end = range.end ?? sizeBytes - 1
  return {
    source: 'local',
    status: 206,
    headers: partialHeaders(d, range.start, end),
    digest,
    body: await read(range),
    inFlight: true,
  }
}
