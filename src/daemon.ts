import { isIP } from 'node:net'
import { networkInterfaces } from 'node:os'
import type { FastifyInstance } from 'fastify'
import { multiaddr } from '@multiformats/multiaddr'
import { pino, type Logger } from 'pino'
import { collectDefaultMetrics, Gauge, Registry } from 'prom-client'
import { ConfigError } from './config-error.js'
import type { RunConfig } from './config.js'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { loadOrCreateIdentity } from './identity.js'
import { PeerAuth } from './trust/peer-auth.js'
import { loadPsk } from './trust/psk.js'
import { repositoryFilter } from './filter.js'
import { RegistryMetrics, registerNodeGauges } from './registry/metrics.js'
import { Herd } from './registry/herd.js'
import { InFlight } from './registry/inflight.js'
import { PeerFetcher } from './registry/peers.js'
import { createMirror } from './registry/mirror.js'
import { CorruptReports } from './registry/corrupt-report.js'
import { createPeerServer } from './registry/peer.js'
import { TagResolver } from './registry/tags.js'
import { type KadDhtRouter, kadDhtRouter } from './routing/kad-dht.js'
import type { RoutingKey } from './routing/keys.js'
import { type StateSync, stateSync } from './state.js'
import { containerdStore } from './store/containerd.js'
import { NotFoundError } from './store/errors.js'
import type { Store } from './store/store.js'
import { UpstreamClient } from './upstream/client.js'
import { Endpoints } from './upstream/endpoints.js'
import { StatusCollector } from './ui/collect.js'
import { registerStatusRoutes } from './ui/routes.js'
import { VERSION } from './version.js'

/** A step of start-up that must be undone on stop, in reverse order. */
interface Stoppable {
  name: string
  stop(): Promise<void>
}

export interface Daemon {
  peerId: string
  peerUrl: string
  mirrorUrl: string
  stop(): Promise<void>
}

function splitHostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':')
  return { host: address.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(address.slice(i + 1)) }
}

/** `host:port` for a URL: an IPv6 address goes in brackets (`[fd00::7]:29021`). */
function joinHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`
}

/** The peer URL other nodes use: `--peer-advertise-address` is host:port, or a bare host (the chart's `$(HOST_IP)`). */
function advertisedPeerUrl(config: RunConfig, peerPort: number): string {
  const a = config.peerAdvertiseAddress
  if (a === '') return `http://${joinHostPort(advertisedPeerHost(config), peerPort)}`
  if (isIP(a) !== 0 || !a.includes(':')) return `http://${joinHostPort(a, peerPort)}`
  return `http://${a}`
}

/** The address other nodes use for our peer endpoint, when it is bound to every interface. */
function advertisedPeerHost(config: RunConfig): string {
  const bound = splitHostPort(config.peerAddress).host
  if (bound !== '0.0.0.0' && bound !== '::') return bound
  const p2pHost = config.p2pAddress
    .flatMap((a) => multiaddr(a).getComponents())
    .find((c) => (c.name === 'ip4' || c.name === 'ip6') && c.value !== '0.0.0.0' && c.value !== '::')?.value
  if (p2pHost !== undefined && p2pHost !== '0.0.0.0' && p2pHost !== '::') return p2pHost
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address
  }
  return '127.0.0.1'
}

async function listen(server: FastifyInstance, address: string, option: string): Promise<string> {
  const { host, port } = splitHostPort(address)
  try {
    return await server.listen({ host, port })
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    // `[::]` (every address, both families) on a host without IPv6: every IPv4 address instead
    if (host === '::' && (code === 'EAFNOSUPPORT' || code === 'EADDRNOTAVAIL'))
      return await listen(server, `0.0.0.0:${port}`, option)
    const why =
      code === 'EADDRINUSE'
        ? 'address already in use'
        : code === 'EADDRNOTAVAIL'
          ? 'address not available on this host'
          : (err as Error).message
    throw new Error(`cannot listen on ${option} ${address}: ${why}`)
  }
}

/** Fails fast, with the socket in the message, when containerd cannot be reached at start. */
async function checkStore(store: Store, config: RunConfig): Promise<void> {
  try {
    await store.images({ signal: AbortSignal.timeout(5000) })
  } catch (err) {
    throw new Error(
      `cannot reach containerd at --containerd-address ${config.containerdAddress}: ${(err as Error).message}`,
    )
  }
}

/**
 * Starts every part in dependency order: store → peer endpoint → router → state sync → mirror. Anything
 * that fails stops what already started, so a bad flag or busy port leaves nothing behind.
 */
export async function startDaemon(config: RunConfig, components: { logger: Logger }): Promise<Daemon> {
  const logger = components.logger
  const metrics = new Registry()
  collectDefaultMetrics({ register: metrics })
  const registryMetrics = new RegistryMetrics(metrics)
  new Gauge({
    name: 'kagami_build_info',
    help: 'kagami version and Node.js runtime (always 1)',
    labelNames: ['version', 'node'],
    registers: [metrics],
  }).set({ version: VERSION, node: process.version }, 1)
  const filter = repositoryFilter({ include: config.include, exclude: config.exclude })
  const started: Stoppable[] = []
  const startedAt = Date.now()
  const stopAll = async (): Promise<void> => {
    for (const part of started.reverse()) {
      try {
        await part.stop()
      } catch (err) {
        logger.warn({ err, part: part.name }, 'stop failed')
      }
    }
  }

  try {
    // `--registries` first: a bad CA file is a config error, reported before anything starts
    const endpoints = await Endpoints.load(config.registries).catch((err: Error) => {
      throw err.name === 'UpstreamConfigError'
        ? new ConfigError(`invalid --registries (KAGAMI_REGISTRIES): ${err.message}`)
        : err
    })
    started.push({ name: 'upstream endpoints', stop: async () => endpoints.close() })

    const store = containerdStore(
      { logger },
      {
        address: config.containerdAddress,
        namespace: config.containerdNamespace,
        contentDir: config.containerdContentDir === '' ? undefined : config.containerdContentDir,
      },
    )
    started.push({ name: 'store', stop: () => store.close() })
    await checkStore(store, config)

    const psk = config.pskFile === '' ? undefined : await loadPsk(config.pskFile)
    if (psk === undefined)
      logger.warn(
        'open network: any host that reaches the p2p port can join and fetch; set --psk-file (the chart does)',
      )
    const privateKey = await loadOrCreateIdentity(config.stateDir, logger)
    const self = peerIdFromPrivateKey(privateKey).toString()
    // The router starts after the peer endpoint (it announces the endpoint's URL): until then nobody is a member.
    let members: KadDhtRouter | undefined = undefined
    const peerAuth = new PeerAuth({ privateKey, self, isMember: (id) => members?.isConnected(id) ?? false })

    // The servers answer only with what state sync advertises; it starts after the router, which needs the
    // peer endpoint's URL, so until then they answer nothing locally.
    let state: StateSync | undefined = undefined
    // Blobs being downloaded here are advertised (and served) while they arrive; built once the router is.
    let inflight: InFlight | undefined = undefined
    // The herd's flights (one upstream fetch per blob, cluster-wide); built with the mirror, after the router.
    let herd: Herd | undefined = undefined
    const advertises = (key: RoutingKey): boolean =>
      (state?.advertises(key) ?? false) || (inflight?.advertises(key) ?? false)
    const reports = new CorruptReports({
      store,
      logger,
      onCorrupt: (digest) => void state?.quarantine(digest),
    })
    const peerServer = createPeerServer({
      store,
      advertises,
      reports,
      auth: config.peerAuth === 'required' ? peerAuth : undefined,
      logger,
      metrics: registryMetrics,
      filter,
      inflight: {
        ingest: (d) => inflight?.ingest(d),
        idleTimeoutMs: config.bodyIdleTimeout,
        served: () => inflight?.served(),
      },
      herd: {
        // the peer endpoint never asks anyone
        join: async () => undefined,
        fetch: async () => undefined,
        serve: async (req, client, who, sizeHint) => {
          if (herd === undefined) throw new NotFoundError('not ready to fetch for peers')
          return await herd.serve(req, client, who, sizeHint)
        },
      },
    })
    // the mirror listens on 127.0.0.1 only; Prometheus scrapes the node address
    peerServer.get('/metrics', async (_req, reply) =>
      reply.type(metrics.contentType).send(await metrics.metrics()),
    )
    started.push({ name: 'peer endpoint', stop: () => peerServer.close() })
    await listen(peerServer, config.peerAddress, '--peer-address')
    const peerPort = (peerServer.server.address() as { port: number }).port
    const peerUrl = advertisedPeerUrl(config, peerPort)

    const router = kadDhtRouter(
      { logger, metrics },
      {
        listen: [...config.p2pAddress],
        peerUrl,
        bootstrap: [...config.bootstrap],
        privateKey,
        psk,
        reprovideIntervalMs: config.reprovideInterval,
        recordValidityMs: config.recordValidity,
      },
    )
    try {
      await router.start()
    } catch (err) {
      throw new Error(
        `cannot start the DHT on --p2p-address ${config.p2pAddress.join(' ')}: ${(err as Error).message}`,
      )
    }
    started.push({ name: 'router', stop: () => router.stop() })
    members = router

    registerNodeGauges(metrics, {
      containerdConnected: () => store.connected(),
      pendingProvides: () => router.pendingProvides(),
    })

    const sync = stateSync(
      { store, router, logger },
      { resyncIntervalMs: config.resyncInterval, include: config.include, exclude: config.exclude },
    )
    state = sync
    await sync.start()
    started.push({ name: 'state sync', stop: () => sync.stop() })
    const downloads = new InFlight({
      store,
      router,
      advertised: (key) => sync.advertises(key),
      logger,
      metrics,
    })
    inflight = downloads
    started.push({ name: 'in-flight downloads', stop: () => downloads.stop() })

    // `--registries` gives each upstream its scheme and TLS settings; tags are asked there first.
    const upstream = new UpstreamClient(
      { endpoints, logger, metrics },
      { tagTimeoutMs: config.upstreamTagTimeout, backoffMs: config.upstreamBackoff },
    )
    const tags = new TagResolver({ upstream, logger, metrics }, { policy: config.resolveTagsFromPeers })
    const peers = new PeerFetcher(
      {
        router,
        store,
        signer: peerAuth,
        logger,
        metrics: registryMetrics,
        upstreamDown: (r) => upstream.isDown(r),
      },
      {
        resolveTimeoutMs: config.resolveTimeout,
        outageResolveTimeoutMs: config.outageResolveTimeout,
        peerHeadersTimeoutMs: config.peerHeadersTimeout,
        bodyIdleTimeoutMs: config.bodyIdleTimeout,
        stripe: { thresholdBytes: config.stripeThreshold, minSingleBytesPerSecond: config.stripeBelowRate },
      },
    )
    const flights = new Herd(
      {
        self: () => router.peerId,
        router,
        upstream,
        store,
        expect: (digest) => downloads.expect(digest),
        fetchFrom: (peer, req, client, headersTimeoutMs) =>
          peers.fetchFrom(peer, req, client, headersTimeoutMs),
        lookAgain: (req, client) => peers.fetch(req, client),
        logger,
        metrics,
      },
      {
        budgetMs: config.herdBudget,
        budgetMaxMs: config.herdBudgetMax,
        bodyIdleTimeoutMs: Math.max(config.bodyIdleTimeout, 10_000),
      },
    )
    // with herd off this node neither asks an elected node nor fetches for others (they then fall back)
    if (config.herd) herd = flights
    started.push({ name: 'herd', stop: async () => flights.stop() })

    const mirror = createMirror(
      {
        store,
        advertises,
        router,
        signer: peerAuth,
        logger,
        metrics: registryMetrics,
        filter,
        tags,
        expect: (digest) => downloads.expect(digest),
        peers,
        herd: config.herd ? flights : undefined,
      },
      {
        resolveTimeoutMs: config.resolveTimeout,
        peerHeadersTimeoutMs: config.peerHeadersTimeout,
        bodyIdleTimeoutMs: config.bodyIdleTimeout,
      },
    )
    mirror.get('/metrics', async (_req, reply) =>
      reply.type(metrics.contentType).send(await metrics.metrics()),
    )
    mirror.get('/healthz', async () => ({ ok: true }))
    mirror.get('/readyz', async (_req, reply) => {
      // Ready means serving: the DHT has started and containerd answers (a pod whose containerd went away
      // serves nothing, so it must leave the Service and show in `kubectl get pods`).
      const containerd = await store.images({ signal: AbortSignal.timeout(1000) }).then(
        () => true,
        () => false,
      )
      const ready = containerd && router.isReady()
      return reply.code(ready ? 200 : 503).send({ ready, containerd })
    })
    // /status, /status/holders and /ui: built from the components' own state, localhost only
    registerStatusRoutes(
      mirror,
      new StatusCollector(
        {
          router,
          store,
          state: sync,
          activity: registryMetrics.activity,
          containerdConnected: () => store.connected(),
        },
        {
          peerUrl,
          network: psk === undefined ? 'open' : 'private',
          version: VERSION,
          startedAt,
          containerdAddress: config.containerdAddress,
          containerdNamespace: config.containerdNamespace,
          bootstrap: config.bootstrap,
        },
      ),
    )
    started.push({ name: 'mirror', stop: () => mirror.close() })
    const mirrorUrl = await listen(mirror, config.mirrorAddress, '--mirror-address')

    logger.info(
      {
        version: VERSION,
        node: process.version,
        peerId: router.peerId,
        peerUrl,
        mirrorUrl,
        p2p: config.p2pAddress,
      },
      'kagami started',
    )
    return { peerId: router.peerId ?? '', peerUrl, mirrorUrl, stop: stopAll }
  } catch (err) {
    await stopAll()
    throw err
  }
}

/** `kagami run`: starts, then stops cleanly on SIGTERM/SIGINT (stop advertising, drain responses, exit 0). */
export async function runDaemon(config: RunConfig): Promise<number> {
  const logger = pino({
    level: config.logLevel,
    name: 'kagami',
    redact: ['req.headers.authorization', 'headers.authorization', '*.psk', 'psk'],
  })
  const daemon = await startDaemon(config, { logger })
  await new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      logger.info({ signal }, 'stopping')
      process.off('SIGTERM', onSignal)
      process.off('SIGINT', onSignal)
      resolve()
    }
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
  })
  await daemon.stop()
  logger.info('stopped')
  return 0
}
