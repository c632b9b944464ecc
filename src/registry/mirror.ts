import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import type { RepositoryFilter } from '../filter.js'
import type { Router } from '../routing/router.js'
import type { Store } from '../store/store.js'
import type { RegistryMetrics } from './metrics.js'
import { PeerFetcher } from './peers.js'
import { createRegistryServer } from './server.js'
import type { TagResolver } from './tags.js'

export interface MirrorComponents {
  store: Store
  router: Router
  logger: Logger
  metrics: RegistryMetrics
  filter?: RepositoryFilter
  /** Tags resolve upstream first when present; without it a tag is served as local or peers have it. */
  tags?: TagResolver
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
  const peers = new PeerFetcher(
    { router: components.router, logger: components.logger, metrics: components.metrics },
    init,
  )
  return createRegistryServer({ ...components, peers }, { server: 'mirror' })
}
