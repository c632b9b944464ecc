import fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify'
import { createRequire } from 'node:module'
import type { Logger } from 'pino'
import { type DistributionRequest, parseDistributionPath } from '../oci/index.js'
import type { RepositoryFilter } from '../filter.js'
import { NotFoundError } from '../store/errors.js'
import type { Store } from '../store/store.js'
import { errorResponse, MethodNotAllowedError, type Target } from './errors.js'
import type { Advertises } from './local.js'
import type { RegistryMetrics, Source } from './metrics.js'
import type { PeerFetcher } from './peers.js'
import { HERD_HEADER } from './herd.js'
import { IN_FLIGHT_HEADER } from './served.js'
import { resolveContent, type ResolverComponents } from './resolve.js'
import { sendBlob } from './send-blob.js'
import type { TagResolver } from './tags.js'
import { SOCKET_BUFFER_BYTES, type Served } from './served.js'

export interface RegistryServerComponents {
  store: Store
  /** What this node advertises: the only local content either server answers with. */
  advertises: Advertises
  logger: Logger
  metrics: RegistryMetrics
  /** Present on the mirror only: the peer endpoint never asks peers (no request loops). */
  peers?: PeerFetcher
  filter?: RepositoryFilter
  /** Mirror only: resolves tags upstream first (tags.ts). */
  tags?: TagResolver
  /** Mirror only: told of blobs about to be downloaded here (inflight.ts). */
  expect?: ResolverComponents['expect']
  /** Peer endpoint only: serves blobs this node is still downloading. */
  inflight?: ResolverComponents['inflight']
  /** Both: the mirror asks the elected node; the peer endpoint fetches for the herd when elected. */
  herd?: ResolverComponents['herd']
}

export interface RegistryServerInit {
  server: 'mirror' | 'peer'
  /** Blob bodies streaming at once; more get 503 + Retry-After (default 16). */
  maxDownloads?: number
  /** Open connections; more are refused by the kernel's accept path (default 256). */
  maxConnections?: number
}

/** Every download slot is taken: the client should retry shortly or go elsewhere. */
export class TooManyDownloadsError extends Error {
  override name = 'TooManyDownloadsError'
}

declare module 'fastify' {
  interface FastifyRequest {
    kagami?: {
      kind: Target | 'base'
      source?: Source
      digest?: string
      peer?: string
      ns?: string
      bytes?: number
    }
  }
}

const EMPTY = Buffer.alloc(0)
/** Paths that are probes (kubelet), scrapes (Prometheus) or the status page, never registry traffic. */
const NOT_REGISTRY_TRAFFIC = /^\/(?:healthz|readyz|metrics|status|ui|favicon\.ico)(?:[/?]|$)/
const REPOSITORY_IN_PATH = /^\/v2\/(.+?)\/(?:manifests|blobs)\//
const API_VERSION = { 'docker-distribution-api-version': 'registry/2.0' }

async function send(reply: FastifyReply, served: Served): Promise<FastifyReply> {
  if (served.body !== undefined && !Buffer.isBuffer(served.body) && served.inFlight !== true) {
    // blobs: written chunk by chunk, each buffer back to its pool once written (send-blob.ts)
    await sendBlob(reply, served.status, { ...served.headers, ...API_VERSION }, served.body)
    return reply
  }
  reply.code(served.status).headers({
    ...served.headers,
    ...API_VERSION,
    ...(served.inFlight === true ? { [IN_FLIGHT_HEADER]: '1' } : {}),
  })
  // A blob still arriving may have no byte yet, and sendBlob (like fastify) writes the headers with the first
  // one: a peer's header deadline would fire. Piped by fastify instead, headers flushed at once.
  if (served.inFlight === true) reply.raw.once('pipe', () => reply.raw.flushHeaders())
  // an empty Buffer (not null) keeps fastify from serialising JSON and rewriting Content-Type on HEAD
  return reply.send(served.body ?? EMPTY)
}

type CompilerFactory = (...args: unknown[]) => unknown
const requireLazily = createRequire(import.meta.url)
let validators: CompilerFactory | undefined
let serializers: CompilerFactory | undefined
/**
 * Fastify's schema compilers (Ajv; fast-json-stringify), loaded the first time a route has a schema. Why:
 * fastify loads and sets both up when an instance is created, ~2 MiB of an idle daemon's RSS
 * (bench/memory.ts), and no route here declares a schema; with one, they load and work as fastify's own.
 */
export const lazySchemaCompilers = {
  buildValidator: (...args: unknown[]): unknown =>
    (validators ??= (requireLazily('@fastify/ajv-compiler') as () => CompilerFactory)())(...args),
  buildSerializer: (...args: unknown[]): unknown =>
    (serializers ??= (requireLazily('@fastify/fast-json-stringify-compiler') as () => CompilerFactory)())(
      ...args,
    ),
}

/**
 * A fastify server with the OCI distribution read API. One `/v2/*` route hands the path to the pure parser
 * (repository names contain slashes). The mirror tries local content, then peers; the peer endpoint serves
 * local content only.
 */
export function createRegistryServer(
  components: RegistryServerComponents,
  init: RegistryServerInit,
): FastifyInstance {
  const { metrics, filter } = components
  const app = fastify({
    loggerInstance: components.logger.child({ component: init.server }) as FastifyBaseLogger,
    // one summary line per request is written in onResponse instead of fastify's two
    logController: new LogController({ disableRequestLogging: true }),
    // hostile clients: bounded URLs, no bodies accepted on the read API
    routerOptions: { maxParamLength: 1024 },
    bodyLimit: 1024,
    return503OnClosing: true,
    // Hostile or broken clients: a request must arrive whole within 10 s (slowloris), a connection with no
    // traffic for 30 s is closed (idle sockets, downloads nobody reads), keep-alive lasts 5 s.
    requestTimeout: 10_000,
    connectionTimeout: 30_000,
    keepAliveTimeout: 5_000,
    // Socket write buffers sized for blobs: with Node's 16 KiB default, serving a file ran at ~0.3 GiB/s
    // here, with 4 MiB at ~1.3–1.9 GiB/s (as fast as docker-registry).
    // Node checks request deadlines every connectionsCheckingInterval (30 s by default): check often.
    http: { highWaterMark: SOCKET_BUFFER_BYTES, connectionsCheckingInterval: 1000 },
    // Requests Node's parser rejects (bad characters, oversized headers) still get an OCI error body.
    clientErrorHandler: (err, socket) => {
      if (socket.destroyed || !socket.writable) return
      const status = (err as NodeJS.ErrnoException).code === 'HPE_HEADER_OVERFLOW' ? 431 : 400
      const body = JSON.stringify({ errors: [{ code: 'UNSUPPORTED', message: 'malformed HTTP request' }] })
      // a HEAD answer carries no body, even when the request line itself was the problem
      const head =
        (err as unknown as { rawPacket?: Buffer }).rawPacket?.subarray(0, 5).toString('latin1') === 'HEAD '
      // then close for real: a half-closed socket of a client that never closes would keep its fd
      socket.end(
        `HTTP/1.1 ${status} Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${head ? '' : body}`,
        () => socket.destroy(),
      )
    },
    forceCloseConnections: false,
    schemaController: { compilersFactory: lazySchemaCompilers as never },
  })

  app.server.maxConnections = init.maxConnections ?? 256
  const maxDownloads = init.maxDownloads ?? 16
  let downloads = 0

  // Per request: when it started, when its first byte went out (TTFB), whether it was counted.
  const timing = new WeakMap<FastifyRequest, { startMs: number; firstByteMs?: number; done: boolean }>()

  /**
   * Counts and logs one finished request, once. fastify's onResponse runs on 'finish' only; a client that
   * goes away mid-body (containerd cancelling a pull) ends with 'close' alone, so that path calls this too:
   * otherwise the in-flight gauge and the status page's in-flight list would keep it forever.
   */
  const finished = (request: FastifyRequest, reply: FastifyReply): void => {
    const k = request.kagami
    const t = timing.get(request)
    if (k === undefined || t === undefined || t.done) return
    t.done = true
    metrics.inflight.dec({ server: init.server })
    metrics.activity.end(request)
    const complete = reply.raw.writableFinished
    const source = k.source ?? (reply.statusCode === 404 ? 'miss' : undefined)
    // bytes count only for a body that went out whole (an aborted or failed stream sent less)
    const bytes = request.method === 'GET' && reply.statusCode < 300 && complete ? (k.bytes ?? 0) : 0
    const durationMs = performance.now() - t.startMs
    metrics.observe({
      server: init.server,
      kind: k.kind,
      source,
      status: reply.statusCode,
      registry: k.ns,
      method: request.method,
      ref: k.digest,
      repository: REPOSITORY_IN_PATH.exec(request.url)?.[1],
      peer: k.peer,
      bytes,
      durationSeconds: durationMs / 1000,
      ttfbSeconds: t.firstByteMs !== undefined ? Math.max(0, t.firstByteMs - t.startMs) / 1000 : undefined,
      remoteAddress: request.socket?.remoteAddress,
    })
    const line = {
      method: request.method,
      path: request.url.length > 300 ? `${request.url.slice(0, 300)}…` : request.url,
      status: reply.statusCode,
      source,
      digest: k.digest,
      peer: k.peer,
      bytes: k.bytes,
      durationMs: Math.round(durationMs * 10) / 10,
      ...(t.firstByteMs !== undefined ? { ttfbMs: Math.round((t.firstByteMs - t.startMs) * 10) / 10 } : {}),
      ...(complete ? {} : { aborted: true }),
    }
    // A miss is normal traffic (containerd falls through) and a local hit is the routine case: debug. Content
    // fetched from a peer is what kagami is for, so the default level shows it; so do failures and aborts.
    if (!complete || source === 'peer' || (reply.statusCode >= 400 && source !== 'miss'))
      request.log.info(line, 'request')
    else request.log.debug(line, 'request')
  }

  app.addHook('onRequest', async (request, reply) => {
    // Probes, scrapes and the status page are not registry traffic: no counters, no "recent requests".
    if (NOT_REGISTRY_TRAFFIC.test(request.url)) return
    metrics.inflight.inc({ server: init.server })
    metrics.activity.begin(request, {
      server: init.server,
      method: request.method,
      path: request.url.slice(0, 300),
    })
    request.kagami = { kind: 'other' }
    const t: { startMs: number; firstByteMs?: number; done: boolean } = {
      startMs: performance.now(),
      done: false,
    }
    timing.set(request, t)
    onFirstWrite(reply, () => (t.firstByteMs = performance.now()))
    reply.raw.once('close', () => finished(request, reply))
  })

  app.addHook('onResponse', async (request, reply) => finished(request, reply))

  app.setErrorHandler((err, request, reply) => {
    const target =
      request.kagami?.kind === 'manifest' || request.kagami?.kind === 'blob' ? request.kagami.kind : 'other'
    const { status, body } = errorResponse(err, target)
    if (status >= 500) request.log.error({ err }, 'unexpected error')
    if (status === 404 && request.kagami !== undefined) request.kagami.source = 'miss'
    if (reply.sent || reply.raw.headersSent) {
      // Headers are out: the only honest signal left is a short body, so containerd retries with Range.
      reply.raw.destroy()
      return
    }
    void reply.code(status).headers(API_VERSION).type('application/json').send(body)
  })

  app.setNotFoundHandler((request, reply) => {
    const { status, body } = errorResponse(new NotFoundError('unknown path'), 'other')
    void reply.code(status).headers(API_VERSION).type('application/json').send(body)
  })

  const handler = async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      throw new MethodNotAllowedError(`${request.method} is not supported: kagami serves pulls only`)
    }
    const query = request.query as Record<string, unknown>
    const ns = typeof query.ns === 'string' ? query.ns : undefined
    let req: DistributionRequest
    try {
      // The raw path: an encoded `%2e%2e` or `%2f` is not a name character, so it is rejected, never decoded.
      req = parseDistributionPath(request.url, ns)
    } catch (err) {
      if (request.kagami !== undefined && /\/manifests\//.test(request.url)) request.kagami.kind = 'manifest'
      else if (request.kagami !== undefined && /\/blobs\//.test(request.url)) request.kagami.kind = 'blob'
      throw err
    }
    if (req.kind === 'base') {
      request.kagami = { kind: 'base' }
      return reply.code(200).headers(API_VERSION).type('application/json').send({})
    }
    const ref = 'tag' in req.reference ? req.reference.tag : req.reference.digest
    request.kagami = { kind: req.kind, ns: req.registry, digest: ref }
    if (filter !== undefined && !filter.allows(req.registry, req.repository)) {
      throw new NotFoundError(`${req.registry}/${req.repository} is not mirrored by this node`)
    }
    const served = await resolveContent(components, req, {
      method: request.method,
      accept: request.headers.accept,
      range: typeof request.headers.range === 'string' ? request.headers.range : undefined,
      // on the peer endpoint the Authorization is the peer's signature, never credentials for upstream
      authorization: init.server === 'mirror' ? request.headers.authorization : undefined,
      herd: init.server === 'peer' ? herdSizeHint(request.headers[HERD_HEADER]) : undefined,
      signal: requestSignal(reply),
    })
    if (served.body !== undefined && !Buffer.isBuffer(served.body)) {
      // a streaming body holds buffers and a file or peer connection until the client has read it all
      if (downloads >= maxDownloads) {
        served.body.destroy()
        void reply.header('retry-after', '1')
        throw new TooManyDownloadsError(`all ${maxDownloads} download slots are busy`)
      }
      downloads++
      reply.raw.once('close', () => downloads--)
    }
    Object.assign(request.kagami, { source: served.source, digest: served.digest, peer: served.peer })
    const length = Number(served.headers['content-length'])
    if (request.method === 'GET' && Number.isFinite(length)) request.kagami.bytes = length
    return send(reply, served)
  }

  app.route({ method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'], url: '/v2', handler })
  app.route({ method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'], url: '/v2/*', handler })
  return app
}

/**
 * Calls `onFirst` when the response writes its first bytes (headers go out with them): the time to first
 * byte. Wraps `write`/`end` only until that first call, so the blob path pays nothing per chunk.
 */
function onFirstWrite(reply: FastifyReply, onFirst: () => void): void {
  const res = reply.raw as unknown as Record<'write' | 'end', (...args: unknown[]) => unknown>
  const write = res.write
  const end = res.end
  const restore = (): void => {
    onFirst()
    res.write = write
    res.end = end
  }
  res.write = function (this: unknown, ...args: unknown[]) {
    restore()
    return write.apply(this, args)
  }
  res.end = function (this: unknown, ...args: unknown[]) {
    restore()
    return end.apply(this, args)
  }
}

/** The expected size a herd request carries (0: unknown), or undefined for an ordinary request. */
function herdSizeHint(value: string | string[] | undefined): number | undefined {
  if (typeof value !== 'string') return undefined
  const n = Number(value)
  return Number.isSafeInteger(n) && n >= 0 ? n : 0
}

/** Aborts when the client goes away, so peer fetches and store reads stop with it. */
function requestSignal(reply: FastifyReply): AbortSignal {
  const controller = new AbortController()
  // The response closes when it is done or when the client went away first; only the latter aborts.
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) controller.abort()
  })
  return controller.signal
}
