import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import type { RepositoryFilter } from '../filter.js'
import type { Store } from '../store/store.js'
import { parseDigest } from '../oci/index.js'
import { CORRUPT_REPORT_PATH, type CorruptReports } from './corrupt-report.js'
import type { Advertises } from './local.js'
import type { RegistryMetrics } from './metrics.js'
import { createRegistryServer } from './server.js'

export interface PeerServerComponents {
  store: Store
  advertises: Advertises
  /** Checks our copy when a peer says it failed verification. */
  reports?: CorruptReports
  logger: Logger
  metrics: RegistryMetrics
  filter?: RepositoryFilter
}

/**
 * The endpoint other kagami nodes fetch from (bind it to the node address). It serves only this node's
 * content and never asks peers, so two nodes can never bounce a request between them. A PSK auth hook
 * will attach here (`app.addHook('onRequest', …)`).
 */
export function createPeerServer(components: PeerServerComponents): FastifyInstance {
  const app = createRegistryServer(components, { server: 'peer' })
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
