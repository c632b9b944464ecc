import fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify'
import type { Logger } from 'pino'
import { type DistributionRequest, parseDistributionPath } from '../oci/index.js'
import type { RepositoryFilter } from '../filter.js'
import { NotFoundError } from '../store/errors.js'
import type { Store } from '../store/store.js'
import { errorResponse, MethodNotAllowedError, type Target } from './errors.js'
import { type ClientRequest, serveLocal } from './local.js'
import type { RegistryMetrics, Source } from './metrics.js'
import type { PeerFetcher } from './peers.js'
import { sendBlob } from './send-blob.js'
import { BLOB_BUFFER_BYTES, type Served } from './served.js'

export interface RegistryServerComponents {
  store: Store
  logger: Logger
  metrics: RegistryMetrics
  /** Present on the mirror only: the peer endpoint never asks peers (no request loops). */
  peers?: PeerFetcher
  filter?: RepositoryFilter
}

export interface RegistryServerInit {
  server: 'mirror' | 'peer'
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
const API_VERSION = { 'docker-distribution-api-version': 'registry/2.0' }

async function send(reply: FastifyReply, served: Served): Promise<FastifyReply> {
  if (served.body !== undefined && !Buffer.isBuffer(served.body)) {
    // blobs: written chunk by chunk, each buffer back to its pool once written (send-blob.ts)
    await sendBlob(reply, served.status, { ...served.headers, ...API_VERSION }, served.body)
    return reply
  }
  reply.code(served.status).headers({ ...served.headers, ...API_VERSION })
  // an empty Buffer (not null) keeps fastify from serialising JSON and rewriting Content-Type on HEAD
  return reply.send(served.body ?? EMPTY)
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
  const { store, metrics, peers, filter } = components
  const app = fastify({
    loggerInstance: components.logger.child({ component: init.server }) as FastifyBaseLogger,
    // one summary line per request is written in onResponse instead of fastify's two
    logController: new LogController({ disableRequestLogging: true }),
    // hostile clients: bounded URLs, no bodies accepted on the read API
    routerOptions: { maxParamLength: 1024 },
    bodyLimit: 1024,
    return503OnClosing: true,
    // Socket write buffers sized for blobs: with Node's 16 KiB default, serving a file ran at ~0.3 GiB/s
    // here, with 4 MiB at ~1.3–1.9 GiB/s (as fast as docker-registry).
    http: { highWaterMark: BLOB_BUFFER_BYTES },
    // Requests Node's parser rejects (bad characters, oversized headers) still get an OCI error body.
    clientErrorHandler: (err, socket) => {
      if (socket.destroyed || !socket.writable) return
      const status = (err as NodeJS.ErrnoException).code === 'HPE_HEADER_OVERFLOW' ? 431 : 400
      const body = JSON.stringify({ errors: [{ code: 'UNSUPPORTED', message: 'malformed HTTP request' }] })
      // a HEAD answer carries no body, even when the request line itself was the problem
      const head =
        (err as unknown as { rawPacket?: Buffer }).rawPacket?.subarray(0, 5).toString('latin1') === 'HEAD '
      socket.end(
        `HTTP/1.1 ${status} Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${head ? '' : body}`,
      )
    },
    forceCloseConnections: false,
  })

  app.addHook('onRequest', async (request) => {
    metrics.inflight.inc({ server: init.server })
    request.kagami = { kind: 'other' }
  })

  app.addHook('onResponse', async (request, reply) => {
    metrics.inflight.dec({ server: init.server })
    const k = request.kagami ?? { kind: 'other' }
    const source = k.source ?? (reply.statusCode === 404 ? 'miss' : undefined)
    metrics.requests.inc({
      server: init.server,
      kind: k.kind,
      source: source ?? 'none',
      status: String(reply.statusCode),
    })
    const line = {
      method: request.method,
      path: request.url.length > 300 ? `${request.url.slice(0, 300)}…` : request.url,
      status: reply.statusCode,
      source,
      digest: k.digest,
      peer: k.peer,
      bytes: k.bytes,
      durationMs: Math.round(reply.elapsedTime * 10) / 10,
    }
    // A miss is normal traffic (containerd falls through), so it logs at debug.
    if (source === 'miss' || reply.statusCode < 400) request.log.debug(line, 'request')
    else request.log.info(line, 'request')
  })

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
    const client: ClientRequest = {
      method: request.method,
      accept: request.headers.accept,
      range: typeof request.headers.range === 'string' ? request.headers.range : undefined,
      signal: requestSignal(reply),
    }
    let served: Served | undefined
    try {
      served = await serveLocal(store, req, client)
    } catch (err) {
      const name = (err as Error).name
      // Not here: ask peers (mirror only). Range and bad-input errors are the client's and are final.
      if (
        name !== 'NotFoundError' &&
        name !== 'StoreUnavailableError' &&
        name !== 'ManifestNotAcceptableError'
      )
        throw err
      if (peers === undefined) throw err
    }
    served ??= await peers?.fetch(req, client)
    if (served === undefined)
      throw new NotFoundError(`${req.kind} ${ref} not found on this node or its peers`)
    Object.assign(request.kagami, { source: served.source, digest: served.digest, peer: served.peer })
    const length = Number(served.headers['content-length'])
    if (request.method === 'GET' && Number.isFinite(length)) request.kagami.bytes = length
    if (request.method === 'GET')
      metrics.bytes.inc({ server: init.server, source: served.source }, Number.isFinite(length) ? length : 0)
    return send(reply, served)
  }

  app.route({ method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'], url: '/v2', handler })
  app.route({ method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'], url: '/v2/*', handler })
  return app
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
