import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { Agent, type Dispatcher } from 'undici'
import type { RepositoryFilter } from '../filter.js'
import type { Router } from '../routing/router.js'
import type { Store } from '../store/store.js'
import type { RegistryMetrics } from './metrics.js'
import { PeerFetcher } from './peers.js'
import { createRegistryServer } from './server.js'

export interface MirrorComponents {
  store: Store
  router: Router
  logger: Logger
  metrics: RegistryMetrics
  /** HTTP client for peer endpoints; one is created (and closed with the server) when absent. */
  agent?: Dispatcher
  filter?: RepositoryFilter
}

export interface MirrorInit {
  /** Look for a first peer this long before answering 404 (containerd then asks the next host). */
  resolveTimeoutMs: number
  peerHeadersTimeoutMs: number
  bodyIdleTimeoutMs: number
  hedgeDelayMs?: number
}

/** The mirror containerd asks (bind it to 127.0.0.1): local content, then peers, then a fast 404. */
export function createMirror(components: MirrorComponents, init: MirrorInit): FastifyInstance {
  const ownAgent = components.agent === undefined
  const agent = components.agent ?? new Agent({ keepAliveTimeout: 30_000, connections: 32, pipelining: 0 })
  const peers = new PeerFetcher(
    { router: components.router, agent, logger: components.logger, metrics: components.metrics },
    init,
  )
  const app = createRegistryServer({ ...components, peers }, { server: 'mirror' })
  if (ownAgent) app.addHook('onClose', async () => (agent as Agent).close())
  return app
}
