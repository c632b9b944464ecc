import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import type { RepositoryFilter } from '../filter.js'
import type { Digest } from '../oci/index.js'
import type { Router } from '../routing/router.js'
import type { Store } from '../store/store.js'
import type { Advertises } from './local.js'
import type { RegistryMetrics } from './metrics.js'
import { HOP_HEADER, PeerFetcher, type PeerFetcherInit, type RequestSigner } from './peers.js'
import type { ResolverComponents } from './resolve.js'
import { createRegistryServer } from './server.js'
import type { TagResolver } from './tags.js'

export interface MirrorComponents {
  store: Store
  /** Signs requests to peers; peers that require auth refuse unsigned ones. */
  signer?: RequestSigner
  advertises: Advertises
  router: Router
  logger: Logger
  metrics: RegistryMetrics
  filter?: RepositoryFilter
  /** Tags resolve upstream first when present; without it a tag is served as local or peers have it. */
  tags?: TagResolver
  /** Told of blobs this node is about to download, so it can advertise them while they arrive. */
  expect?: (digest: Digest) => void
  /** The peer fetcher, when the daemon shares it (the herd fetches through it too); else one is made. */
  peers?: PeerFetcher
  /** One upstream fetch per blob, cluster-wide (herd.ts). */
  herd?: ResolverComponents['herd']
  /** For the fetcher made here: whether a registry is down (see PeerFetcherInit.outageResolveTimeoutMs). */
  upstreamDown?: (registry: string) => boolean
}

export interface MirrorInit {
  /** Look for a first peer this long before answering 404 (containerd then asks the next host). */
  resolveTimeoutMs: number
  /** ... while the request's registry is down (PeerFetcherInit.outageResolveTimeoutMs). */
  outageResolveTimeoutMs?: number
  peerHeadersTimeoutMs: number
  bodyIdleTimeoutMs: number
  hedgeDelayMs?: number
  floorBytesPerSecond?: number
  floorWindowMs?: number
  /** Striping of big blobs over several holders (stripe.ts), for the fetcher made here. */
  stripe?: PeerFetcherInit['stripe']
}

/** The mirror containerd asks (bind it to 127.0.0.1): local content, then peers, then a fast 404. */
export function createMirror(components: MirrorComponents, init: MirrorInit): FastifyInstance {
  const peers =
    components.peers ??
    new PeerFetcher(
      {
        router: components.router,
        store: components.store,
        signer: components.signer,
        logger: components.logger,
        metrics: components.metrics,
        upstreamDown: components.upstreamDown,
      },
      init,
    )
  // containerd pulls a few layers at a time per image: generous limits, separate from the peer endpoint's,
  // so a saturated peer endpoint never starves the node's own pulls
  const app = createRegistryServer(
    { ...components, peers },
    { server: 'mirror', maxDownloads: 64, maxConnections: 1024 },
  )
  // A peer URL pointing at a mirror (ours or another node's) must not turn one request into a chain.
  app.addHook('onRequest', async (request, reply) => {
    if (request.headers[HOP_HEADER] === undefined) return
    return reply
      .code(403)
      .type('application/json')
      .send({ errors: [{ code: 'DENIED', message: 'a request from a kagami node is not relayed again' }] })
  })
  return app
}
