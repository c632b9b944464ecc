import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import type { RepositoryFilter } from '../filter.js'
import type { Store } from '../store/store.js'
import type { RegistryMetrics } from './metrics.js'
import { createRegistryServer } from './server.js'

export interface PeerServerComponents {
  store: Store
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
  return createRegistryServer(components, { server: 'peer' })
}
