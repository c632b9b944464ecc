import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import type { RepositoryFilter } from '../filter.js'
import type { Ingest, Store } from '../store/store.js'
import { type Digest, parseDigest } from '../oci/index.js'
import { CORRUPT_REPORT_PATH, type CorruptReports } from './corrupt-report.js'
import type { Advertises } from './local.js'
import type { RegistryMetrics } from './metrics.js'
import type { ResolverComponents } from './resolve.js'
import { createRegistryServer } from './server.js'

export interface PeerServerComponents {
  store: Store
  advertises: Advertises
  /** Checks our copy when a peer says it failed verification. */
  reports?: CorruptReports
  /** Verifies that a request comes from a connected member (trust/peer-auth.ts); without it, anyone may fetch. */
  auth?: RequestVerifier
  logger: Logger
  metrics: RegistryMetrics
  filter?: RepositoryFilter
  /** Blobs this node is still downloading, served as they arrive (inflight.ts). */
  inflight?: { ingest(digest: Digest): Ingest | undefined; idleTimeoutMs: number; served?(): void }
  /** Fetches a blob upstream once for the peers that elected this node (herd.ts). */
  herd?: ResolverComponents['herd']
}

/**
 * The endpoint other kagami nodes fetch from (bind it to the node address). It serves only this node's
 * content and never asks peers, so two nodes can never bounce a request between them. Requests must be
 * signed by a connected member (`auth`).
 */
export interface RequestVerifier {
  /** The verified peer id, or undefined. */
  verify(header: string | undefined, method: string, path: string): Promise<string | undefined>
}

export function createPeerServer(components: PeerServerComponents): FastifyInstance {
  // The node elected for a blob (herd.ts) serves every other node at once, per blob it won: 16 slots sent
  // the rest of an 8-node herd upstream with 503s. Each slot holds one file and a few MiB of buffers.
  const app = createRegistryServer(components, { server: 'peer', maxDownloads: 64 })
  const auth = components.auth
  if (auth !== undefined) {
    // Before anything looks at the content: an outsider gets the same bare 401 for what we have and what we
    // do not. /metrics stays open for Prometheus.
    app.addHook('onRequest', async (request, reply) => {
      if (!request.url.startsWith('/v2') && !request.url.startsWith('/kagami/')) return
      const peer = await auth.verify(request.headers.authorization, request.method, request.url)
      if (peer === undefined) return reply.code(401).send()
      if (request.kagami !== undefined) request.kagami.peer = peer
    })
  }
  const reports = components.reports
  if (reports !== undefined) {
    app.post(`${CORRUPT_REPORT_PATH}:digest`, async (request, reply) => {
      const digest = parseDigest((request.params as { digest: string }).digest)
      reports.report(digest)
      // the same answer whether or not a check started: a reporter learns nothing about our content
      return reply.code(202).send()
    })
  }
  return app
}
