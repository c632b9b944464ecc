import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { PassThrough } from 'node:stream'
import { anySignal } from 'any-signal'
import type { Logger } from 'pino'
import { BufferPool } from '../buffer-pool.js'
import {
  acceptsMediaType,
  type DistributionRequest,
  type Digest,
  isAnyManifestMediaType,
  isDigest,
} from '../oci/index.js'
import { digestKey, type RoutingKey, tagKey } from '../routing/keys.js'
import type { Peer, Router } from '../routing/router.js'
import { ManifestNotAcceptableError, PeerUnavailableError } from './errors.js'
import { contentHeaders, parseRangeHeader, partialHeaders } from './headers.js'
import type { ClientRequest } from './local.js'
import { MAX_MANIFEST_BYTES } from './local.js'
import type { RegistryMetrics } from './metrics.js'
import { peerRequest, type PeerResponse } from './peer-client.js'
import { HedgeDelay, PeerSource, race } from './race.js'
import { resumableBody, startsAt } from './resume.js'
import { BLOB_BUFFER_BYTES, type Served } from './served.js'
import { verifyBytes, VerifyDigest } from './verify.js'

type ContentRequest = Extract<DistributionRequest, { kind: 'manifest' | 'blob' }>

export interface PeerFetcherComponents {
  router: Router
  logger: Logger
  metrics: RegistryMetrics
  /** Buffers blob bodies are read into (default: its own; the response recycles them). */
  pool?: BufferPool
}

export interface PeerFetcherInit {
  /** How long to look for a first peer before answering a miss. */
  resolveTimeoutMs: number
  peerHeadersTimeoutMs: number
  bodyIdleTimeoutMs: number
  /** Hedge delay before the first latency is observed; later it follows observed header latencies. */
  hedgeDelayMs?: number
}

function keyFor(req: ContentRequest): RoutingKey {
  if ('tag' in req.reference) {
    return tagKey({ registry: req.registry, repository: req.repository, tag: req.reference.tag })
  }
  return digestKey(req.reference.digest)
}

function pathFor(req: ContentRequest): string {
  const ref = 'tag' in req.reference ? req.reference.tag : req.reference.digest
  return `/v2/${req.repository}/${req.kind === 'manifest' ? 'manifests' : 'blobs'}/${ref}?ns=${encodeURIComponent(req.registry)}`
}

async function readBounded(body: Readable, maxBytes: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let n = 0
  for await (const c of body) {
    n += (c as Buffer).length
    if (n > maxBytes) {
      body.destroy()
      throw new PeerUnavailableError(`manifest body over ${maxBytes} bytes`)
    }
    chunks.push(c as Buffer)
  }
  return Buffer.concat(chunks)
}

/** Finds peers that hold content and fetches it: hedged, deadline-bound, verified, resumed. */
export class PeerFetcher {
  private readonly hedge: HedgeDelay
  private readonly log: Logger
  private readonly pool: BufferPool

  constructor(
    private readonly components: PeerFetcherComponents,
    private readonly init: PeerFetcherInit,
  ) {
    this.log = components.logger.child({ component: 'peers' })
    this.pool = components.pool ?? new BufferPool({ bufferBytes: BLOB_BUFFER_BYTES, maxFree: 16 })
    this.hedge = new HedgeDelay({
      initialMs: init.hedgeDelayMs ?? 50,
      minMs: 10,
      maxMs: init.peerHeadersTimeoutMs,
    })
  }

  /**
   * Returns what a peer served, or undefined for a miss: no peer found within `resolveTimeoutMs`, or none
   * could serve it. Never waits without a deadline.
   */
  async fetch(req: ContentRequest, client: ClientRequest): Promise<Served | undefined> {
    const lookup = new AbortController()
    const lookupSignal = anySignal([lookup.signal, client.signal])
    const source = new PeerSource(this.components.router.resolve(keyFor(req), { signal: lookupSignal }))
    // Ends the lookup; for a blob only once its body is done, since a resume may need more peers.
    const done = (): void => {
      lookup.abort()
      lookupSignal.clear()
      void source.close()
    }
    const started = performance.now()
    const firstDeadline = anySignal([AbortSignal.timeout(this.init.resolveTimeoutMs), client.signal])
    let first: Peer | undefined
    try {
      first = await source.next(firstDeadline)
    } finally {
      firstDeadline.clear()
    }
    this.components.metrics.resolveSeconds.observe(
      { result: first === undefined ? 'miss' : 'hit' },
      (performance.now() - started) / 1000,
    )
    if (first === undefined) {
      done()
      return undefined
    }
    try {
      const served =
        req.kind === 'manifest'
          ? await this.manifest(req, client, source, first)
          : await this.blob(req, client, source, first, done)
      if (req.kind === 'manifest' || served.body === undefined) done()
      return served
    } catch (err) {
      done()
      if (client.signal.aborted) throw err
      this.log.debug({ err: (err as Error).message, key: pathFor(req) }, 'no peer could serve')
      return undefined
    }
  }

  private onFailure = (peer: Peer, err: unknown): void => {
    const e = err as Error
    this.components.metrics.peerFailures.inc({ reason: e.name })
    this.log.warn({ peer: peer.id, url: peer.url, err: e.message }, 'peer failed')
  }

  private request(
    peer: Peer,
    path: string,
    init: {
      method: 'GET' | 'HEAD'
      headers?: Record<string, string>
      signal: AbortSignal
      readBufferBytes?: number
    },
  ): Promise<PeerResponse> {
    return peerRequest(peer, {
      ...init,
      // blob bodies go into pool buffers (manifests ask for a small read buffer of their own)
      pool: init.readBufferBytes === undefined ? this.pool : undefined,
      path,
      headersTimeoutMs: this.init.peerHeadersTimeoutMs,
      bodyIdleTimeoutMs: this.init.bodyIdleTimeoutMs,
    }).then((res) => {
      this.hedge.observe(res.latencyMs)
      return res
    })
  }

  /** Manifests are small: fetch whole, verify against the digest asked for (or the peer's digest for a tag). */
  // Trade-off (design §5): a tag found on a peer is served as that peer has it. Fresh-from-upstream would be
  // better while upstream is reachable, but containerd asks the mirror first, so answering here means a
  // moved tag can be served stale until peers re-pull it. Digest requests are immutable and always safe.
  private async manifest(
    req: ContentRequest,
    client: ClientRequest,
    source: PeerSource,
    first: Peer,
  ): Promise<Served> {
    const path = pathFor(req)
    const headers: Record<string, string> = {}
    if (client.accept !== undefined) headers.accept = client.accept
    const win = await race(
      source,
      first,
      async (peer, signal) => {
        // manifests are small: no 4 MiB read buffer per request
        const res = await this.request(peer, path, {
          method: 'GET',
          headers,
          signal,
          readBufferBytes: 64 * 1024,
        })
        const bytes = await readBounded(res.body, MAX_MANIFEST_BYTES)
        const claimed =
          'digest' in req.reference ? req.reference.digest : res.headers['docker-content-digest']
        if (claimed === undefined || !isDigest(claimed))
          throw new PeerUnavailableError(`peer ${peer.id} sent no valid digest`)
        verifyBytes(bytes, claimed)
        const mediaType = res.headers['content-type']?.split(';')[0]?.trim()
        if (!isAnyManifestMediaType(mediaType))
          throw new PeerUnavailableError(`peer ${peer.id} sent content type ${mediaType}`)
        if (!acceptsMediaType(client.accept, mediaType as string))
          throw new ManifestNotAcceptableError(`${mediaType} not accepted`)
        return { bytes, digest: claimed, mediaType: mediaType as string }
      },
      { hedgeDelayMs: this.hedge.ms, signal: client.signal, onFailure: this.onFailure },
    )
    const { bytes, digest, mediaType } = win.value
    return {
      source: 'peer',
      status: 200,
      headers: contentHeaders({ digest, mediaType, sizeBytes: bytes.length }),
      body: client.method === 'GET' ? bytes : undefined,
      digest,
      peer: win.peer.id,
    }
  }

  /** Blobs stream: hedged for the headers, then resumed with Range on failure and hashed on the way. */
  private async blob(
    req: ContentRequest,
    client: ClientRequest,
    source: PeerSource,
    first: Peer,
    done: () => void,
  ): Promise<Served> {
    const digest = req.reference as { digest: Digest }
    const path = pathFor(req)
    const rangeHeader =
      client.range !== undefined && /^bytes=\d*-\d*$/.test(client.range.trim())
        ? client.range.trim()
        : undefined
    const win = await race(
      source,
      first,
      async (peer, signal) => {
        const res = await this.request(peer, path, {
          method: client.method,
          headers: rangeHeader !== undefined ? { range: rangeHeader } : {},
          signal,
        })
        const sizeBytes = Number(
          res.status === 206
            ? /\/(\d+)$/.exec(res.headers['content-range'] ?? '')?.[1]
            : res.headers['content-length'],
        )
        if (!Number.isSafeInteger(sizeBytes)) {
          res.body.destroy()
          throw new PeerUnavailableError(`peer ${peer.id} sent no usable length`)
        }
        return { res, sizeBytes }
      },
      { hedgeDelayMs: this.hedge.ms, signal: client.signal, onFailure: this.onFailure },
    )
    const { res, sizeBytes } = win.value
    const d = { digest: digest.digest, mediaType: 'application/octet-stream', sizeBytes }
    const range = res.status === 206 ? parseRangeHeader(rangeHeader, sizeBytes) : undefined
    const start = range?.start ?? 0
    const end = range?.end ?? sizeBytes - 1
    const headers = range === undefined ? contentHeaders(d) : partialHeaders(d, start, end)
    if (client.method === 'HEAD' || sizeBytes === 0) {
      res.body.destroy()
      win.abort()
      return {
        source: 'peer',
        status: res.status as 200 | 206,
        headers,
        digest: digest.digest,
        peer: win.peer.id,
      }
    }

    const tried = new Set<string>([win.peer.id])
    const reopen = async (offset: number, signal: AbortSignal): Promise<PeerResponse | undefined> => {
      // other known peers first, then new ones from the lookup, then the ones that failed once
      const candidates = [...source.known.filter((p) => !tried.has(p.id))]
      for (;;) {
        let peer = candidates.shift()
        if (peer === undefined) peer = await source.next(AbortSignal.timeout(this.init.peerHeadersTimeoutMs))
        if (peer === undefined) peer = source.known.find((p) => tried.has(p.id) && p.id !== [...tried].at(-1))
        if (peer === undefined) return undefined
        tried.add(peer.id)
        try {
          const next = await this.request(peer, path, {
            method: 'GET',
            headers: { range: `bytes=${offset}-${end}` },
            signal,
          })
          if (startsAt(next, offset)) return next
          next.body.destroy()
          this.onFailure(peer, new PeerUnavailableError(`peer ${peer.id} ignored Range ${offset}-`))
        } catch (err) {
          if (signal.aborted) return undefined
          this.onFailure(peer, err)
        }
      }
    }
    const body = resumableBody({
      first: res,
      start,
      end,
      reopen,
      signal: client.signal,
      onResume: (from, offset, err) =>
        this.log.warn(
          { peer: from.peer.id, offset, err: (err as Error).message, digest: digest.digest },
          'peer body failed; resuming',
        ),
    })
    // Only a whole blob can be checked against its digest.
    const out = new PassThrough({ highWaterMark: BLOB_BUFFER_BYTES })
    const piped =
      range === undefined ? pipeline(body, new VerifyDigest(digest.digest), out) : pipeline(body, out)
    piped
      .catch((err: Error) => {
        if (err.name === 'DigestMismatchError') {
          this.components.metrics.peerFailures.inc({ reason: err.name })
          this.log.warn(
            { peer: win.peer.id, digest: digest.digest, err: err.message },
            'peer sent corrupt content; aborting the response',
          )
        }
      })
      .finally(() => {
        win.abort()
        done()
      })
    return {
      source: 'peer',
      status: res.status as 200 | 206,
      headers,
      body: out,
      digest: digest.digest,
      peer: win.peer.id,
    }
  }
}
