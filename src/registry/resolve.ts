import type { Digest, DistributionRequest } from '../oci/index.js'
import { NotFoundError } from '../store/errors.js'
import type { Ingest, Store } from '../store/store.js'
import { type Advertises, type ClientRequest, serveInFlight, serveLocal } from './local.js'
import type { PeerFetcher } from './peers.js'
import type { Served } from './served.js'
import type { TagResolver } from './tags.js'

type ContentRequest = Extract<DistributionRequest, { kind: 'manifest' | 'blob' }>
type BlobRequest = Extract<DistributionRequest, { kind: 'blob' }>

export interface ResolverComponents {
  store: Store
  /** What this node advertises: the only local content served. */
  advertises: Advertises
  /** Mirror only: the peer endpoint never asks peers (no request loops). */
  peers?: PeerFetcher
  /** Mirror only: tags resolve upstream first (tags.ts). */
  tags?: TagResolver
  /** Mirror only: a blob not held here is about to be downloaded (inflight.ts marks it once it is). */
  expect?: (digest: Digest) => void
  /**
   * Peer endpoint only: blobs this node is downloading, served as they arrive. Never on the mirror: its
   * client is the containerd that writes that very download.
   */
  inflight?: { ingest(digest: Digest): Ingest | undefined; idleTimeoutMs: number; served?(): void }
  /**
   * One upstream fetch per blob (herd.ts). On the mirror: asked last, before a miss. On the peer endpoint:
   * serves a requester that elected this node (`herd` request), fetching upstream once for all of them.
   */
  herd?: {
    /** This node's own flight for the blob, when it is already fetching it for peers. */
    join(req: BlobRequest, client: ResolveRequest): Promise<Served | undefined>
    fetch(req: BlobRequest, client: ResolveRequest): Promise<Served | undefined>
    serve(req: BlobRequest, client: ClientRequest, who: 'peer', sizeHint?: number): Promise<Served>
  }
}

export interface ResolveRequest extends ClientRequest {
  /** The client's credentials, forwarded upstream when a tag is resolved there. */
  authorization?: string
  /**
   * A peer elected this node to fetch the blob upstream for the herd (peer endpoint): the size its pull
   * expects, 0 when it does not know.
   */
  herd?: number
}

// Not here, and not the client's mistake: peers may have it. Range and bad-input errors are final.
const ASK_PEERS = new Set(['NotFoundError', 'StoreUnavailableError', 'ManifestNotAcceptableError'])

/**
 * Where a manifest or blob comes from: this node's store, then peers, then a miss (NotFoundError, which the
 * client's containerd answers by asking the next host). The one policy both servers share; the peer endpoint
 * has no `peers`, so it serves local content only.
 */
export async function resolveContent(
  components: ResolverComponents,
  req: ContentRequest,
  client: ResolveRequest,
): Promise<Served> {
  const { store, advertises, peers, tags, inflight, herd } = components
  // A tag asks upstream first; it may come back as a by-digest request, or as local-only (tags.ts).
  const route =
    tags !== undefined && req.kind === 'manifest' ? await tags.route(req, client) : { req, peers: true }
  try {
    return await serveLocal(store, advertises, route.req, client)
  } catch (err) {
    const ingest = 'digest' in req.reference ? inflight?.ingest(req.reference.digest) : undefined
    if (req.kind === 'blob' && ingest !== undefined && (err as Error).name === 'NotFoundError') {
      const served = await serveInFlight(store, ingest, client, inflight?.idleTimeoutMs ?? 5000)
      inflight?.served?.()
      return served
    }
    const hint = client.herd
    if (
      req.kind === 'blob' &&
      hint !== undefined &&
      herd !== undefined &&
      (err as Error).name === 'NotFoundError'
    )
      return await herd.serve(req, client, 'peer', hint > 0 ? hint : undefined)
    if (!ASK_PEERS.has((err as Error).name) || peers === undefined || !route.peers) throw err
  }
  const blob = req.kind === 'blob' ? req : undefined
  const served =
    (blob !== undefined ? await herd?.join(blob, client) : undefined) ??
    (await peers.fetch(route.req, client)) ??
    (blob !== undefined ? await herd?.fetch(blob, client) : undefined)
  // Our containerd's download is advertised in flight only now that its source is fixed (a peer, the elected
  // node, or upstream after the 404 below). Marked earlier, every node of a herd advertised an empty download
  // before it had a source, and two nodes could pick each other's and wait on each other (bench: stalls
  // of 5 s, then upstream). Marked after, a node only ever follows a download that already has a source.
  if (blob !== undefined && 'digest' in blob.reference && client.method === 'GET')
    components.expect?.(blob.reference.digest)
  if (served !== undefined) return served
  const ref = 'tag' in req.reference ? req.reference.tag : req.reference.digest
  throw new NotFoundError(`${req.kind} ${ref} not found on this node or its peers`)
}
