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
import type { Store } from '../store/store.js'
import { ManifestNotAcceptableError, PeerUnavailableError } from './errors.js'
import { CORRUPT_REPORT_PATH, reportCorrupt } from './corrupt-report.js'
import { contentHeaders, parseRangeHeader, partialHeaders } from './headers.js'
import type { ClientRequest } from './local.js'
import { MAX_MANIFEST_BYTES } from './local.js'
import type { RegistryMetrics } from './metrics.js'
import { peerRequest, type PeerResponse } from './peer-client.js'
import { HERD_HEADER } from './herd.js'
import { SuspectPeers } from './suspects.js'
import { PeerLookup } from './lookup.js'
import { HedgeDelay, race } from './race.js'
import { resumableBody, startsAt } from './resume.js'
import { BLOB_BUFFER_BYTES, type Served } from './served.js'
import { type StripeInit, Striper } from './stripe.js'
import { verifyBytes, VerifyDigest } from './verify.js'

type ContentRequest = Extract<DistributionRequest, { kind: 'manifest' | 'blob' }>

/** Signs requests to peer endpoints (trust/peer-auth.ts). */
export interface RequestSigner {
  sign(method: string, path: string, audience: string): Promise<string>
}

/** Marks a request made by a kagami node; a mirror refuses such requests, so nothing is relayed twice. */
export const HOP_HEADER = 'x-kagami-hop'

export interface PeerFetcherComponents {
  router: Router
  /** Without it, requests go unsigned (peers that require auth answer 401). */
  signer?: RequestSigner
  /** This node's containerd: the size a pull expects comes from its download in progress. */
  store: Store
  logger: Logger
  metrics: RegistryMetrics
  /** Buffers blob bodies are read into (default: its own; the response recycles them). */
  pool?: BufferPool
  /** Whether a registry is down (its last tag lookup failed): a miss then waits `outageResolveTimeoutMs`. */
  upstreamDown?: (registry: string) => boolean
}

// Socket reads from peers: one pool buffer each (a read returns what has arrived, often far less than
// 4 MiB, so bigger buffers mostly hold air).
const PEER_READ_BYTES = 1024 * 1024

export interface PeerFetcherInit {
  /** How long to look for a first peer before answering a miss. */
  resolveTimeoutMs: number
  /**
   * ... while the request's registry is down (default: resolveTimeoutMs). The 404 that sends containerd
   * upstream then fails the pull, and content outside a sampled node's key lists needs a DHT walk (~100-250
   * ms, bench/results/scale.md), which the fast miss deadline cuts short.
   */
  outageResolveTimeoutMs?: number
  peerHeadersTimeoutMs: number
  bodyIdleTimeoutMs: number
  /** Hedge delay before the first latency is observed; later it follows observed header latencies. */
  hedgeDelayMs?: number
  /** How long a peer that sent bytes failing a digest is skipped for that digest (default 30 min). */
  suspectTtlMs?: number
  /** Throughput floor for a peer body (default 1 MiB/s over 5 s of waiting, see resume.ts). */
  floorBytesPerSecond?: number
  floorWindowMs?: number
  /** Striping of big blobs over several holders (stripe.ts); off when absent or its threshold is 0. */
  stripe?: StripeInit
}

/** Socket reads of one stripe: no pool buffers (a stripe is held until written, see stripe.ts). */
const STRIPE_READ_BYTES = 256 * 1024

/** Budget for asking containerd which size a pull expects; without an answer the peer's length is checked by the digest alone. */
const EXPECTED_SIZE_TIMEOUT_MS = 250
/**
 * The same for a herd request, which is worth a longer wait: with the size the elected node answers in ~20 ms;
 * without it, only once upstream answered and its download opened (8-node bench: 1.8 s, past the budget).
 */
const HERD_EXPECTED_SIZE_TIMEOUT_MS = 1000
/** How long a peer that trickled a blob is skipped for that blob. */
const SLOW_PEER_TTL_MS = 60_000
/** Peers one resume asks before the body fails (containerd then retries the whole request). */
const MAX_REOPEN_ATTEMPTS = 8
/** Budget for telling a peer its copy failed verification (fire and forget). */
const REPORT_TIMEOUT_MS = 2000

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
  private readonly suspects: SuspectPeers
  private readonly striper: Striper | undefined

  constructor(
    private readonly components: PeerFetcherComponents,
    private readonly init: PeerFetcherInit,
  ) {
    this.log = components.logger.child({ component: 'peers' })
    this.pool = components.pool ?? new BufferPool({ bufferBytes: PEER_READ_BYTES, maxFree: 32 })
    this.hedge = new HedgeDelay({
      initialMs: init.hedgeDelayMs ?? 50,
      minMs: 10,
      maxMs: init.peerHeadersTimeoutMs,
    })
    this.suspects = new SuspectPeers({ ttlMs: init.suspectTtlMs ?? 30 * 60_000, maxEntries: 10_000 })
    this.striper =
      init.stripe !== undefined && init.stripe.thresholdBytes > 0
        ? new Striper({ logger: components.logger, metrics: components.metrics }, init.stripe)
        : undefined
  }

  /**
   * Returns what a peer served, or undefined for a miss: no peer found within `resolveTimeoutMs`, or none
   * could serve it. Never waits without a deadline.
   */
  async fetch(req: ContentRequest, client: ClientRequest): Promise<Served | undefined> {
    const digest = 'digest' in req.reference ? req.reference.digest : undefined
    const lookup = new PeerLookup(this.components.router, keyFor(req), {
      signal: client.signal,
      skip: digest === undefined ? undefined : (p) => this.suspects.has(digest, p.id),
    })
    const started = performance.now()
    const outage = this.components.upstreamDown?.(req.registry) === true
    const budgetMs = outage
      ? (this.init.outageResolveTimeoutMs ?? this.init.resolveTimeoutMs)
      : this.init.resolveTimeoutMs
    const firstDeadline = anySignal([AbortSignal.timeout(budgetMs), client.signal])
    let first: Peer | undefined
    try {
      first = await lookup.next(firstDeadline)
    } finally {
      firstDeadline.clear()
    }
    this.components.metrics.resolveSeconds.observe(
      { result: first === undefined ? 'miss' : 'hit' },
      (performance.now() - started) / 1000,
    )
    if (first === undefined) {
      lookup.close()
      return undefined
    }
    try {
      const served =
        req.kind === 'manifest'
          ? await this.manifest(req, client, lookup, first)
          : await this.blob(req, client, lookup, first)
      // a streaming blob body closes the lookup when it ends (a resume may need more peers until then)
      if (req.kind === 'manifest' || served.body === undefined) lookup.close()
      return served
    } catch (err) {
      lookup.close()
      // a range past the end is the client's mistake, answered as for local content
      if (client.signal.aborted || (err as Error).name === 'RangeNotSatisfiableError') throw err
      this.log.debug({ err: (err as Error).message, key: pathFor(req) }, 'no peer could serve')
      return undefined
    }
  }

  /**
   * Fetches a blob from one chosen peer (the node elected to fetch it from upstream, herd.ts), with `first`'s
   * extra headers and header deadline; verified, and resumed from other holders as any peer body. Undefined
   * when that peer cannot serve it in time.
   */
  async fetchFrom(
    peer: Peer,
    req: ContentRequest,
    client: ClientRequest,
    headersTimeoutMs: number,
  ): Promise<Served | undefined> {
    if (req.kind !== 'blob' || !('digest' in req.reference)) return undefined
    const digest = req.reference.digest
    if (this.suspects.has(digest, peer.id)) return undefined
    // the size our pull expects lets the elected node answer before upstream does (herd.ts)
    const expected = await this.expectedSize(digest, client.signal, HERD_EXPECTED_SIZE_TIMEOUT_MS)
    const first = { headers: { [HERD_HEADER]: String(expected ?? 0) }, headersTimeoutMs }
    const lookup = new PeerLookup(this.components.router, keyFor(req), {
      signal: client.signal,
      skip: (p) => p.id === peer.id || this.suspects.has(digest, p.id),
    })
    try {
      const served = await this.blob(req, client, lookup, peer, { peer: peer.id, ...first, expected })
      if (served.body === undefined) lookup.close()
      return served
    } catch (err) {
      lookup.close()
      if (client.signal.aborted || (err as Error).name === 'RangeNotSatisfiableError') throw err
      this.log.debug({ err: (err as Error).message, peer: peer.id, digest }, 'elected peer could not serve')
      return undefined
    }
  }

  /**
   * A peer sent bytes that fail their digest: skip it for that digest, count it, and tell it, so the node
   * holding a damaged copy can check itself and stop advertising it.
   */
  private corrupt(peer: Peer, digest: Digest, err: Error): void {
    this.suspects.add(digest, peer.id)
    this.components.metrics.peerFailures.inc({ reason: err.name })
    this.log.warn({ peer: peer.id, url: peer.url, digest, err: err.message }, 'peer sent corrupt content')
    const signal = AbortSignal.timeout(REPORT_TIMEOUT_MS)
    void this.peerHeaders(peer, `${CORRUPT_REPORT_PATH}${digest}`, 'POST')
      .then((headers) => reportCorrupt(peer, digest, { headers, signal }))
      .catch(() => undefined)
  }

  /** A peer too slow for a digest is skipped for it a while, so containerd's retry goes elsewhere or upstream. */
  private slow(peer: Peer, digest: Digest, err: unknown): void {
    if ((err as Error).name !== 'PeerTooSlowError') return
    this.suspects.add(digest, peer.id, SLOW_PEER_TTL_MS)
    this.components.metrics.peerFailures.inc({ reason: 'PeerTooSlowError' })
  }

  /** The size containerd expects for a blob it is pulling now (its ingest), if it says so in time. */
  private async expectedSize(
    digest: Digest,
    signal: AbortSignal,
    timeoutMs = EXPECTED_SIZE_TIMEOUT_MS,
  ): Promise<number | undefined> {
    const deadline = anySignal([AbortSignal.timeout(timeoutMs), signal])
    try {
      const ingests = await this.components.store.ingests({ signal: deadline })
      const total = ingests.find((i) => i.expected === digest && i.totalBytes > 0)?.totalBytes
      return total
    } catch {
      return undefined // containerd slow or away: the digest check still guards the bytes
    } finally {
      deadline.clear()
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
      headersTimeoutMs?: number
    },
  ): Promise<PeerResponse> {
    return this.peerHeaders(peer, path, init.method)
      .then((ours) =>
        peerRequest(peer, {
          ...init,
          // blob bodies go into pool buffers (manifests ask for a small read buffer of their own)
          pool: init.readBufferBytes === undefined ? this.pool : undefined,
          headers: { ...init.headers, ...ours },
          path,
          headersTimeoutMs: init.headersTimeoutMs ?? this.init.peerHeadersTimeoutMs,
          bodyIdleTimeoutMs: this.init.bodyIdleTimeoutMs,
        }),
      )
      .then((res) => {
        this.hedge.observe(res.latencyMs)
        return res
      })
  }

  /** Headers of every request this node makes to a peer: its signature, and the mark that it is relayed. */
  private async peerHeaders(peer: Peer, path: string, method: string): Promise<Record<string, string>> {
    const signer = this.components.signer
    const hop = { [HOP_HEADER]: '1' }
    return signer === undefined ? hop : { ...hop, authorization: await signer.sign(method, path, peer.id) }
  }

  /** Manifests are small: fetch whole, verify against the digest asked for (or the peer's digest for a tag). */
  // A tag reaches this point only when the registry did not answer (registry/tags.ts): the peer's tag is the
  // fallback. Digest requests are immutable and always safe.
  private async manifest(
    req: ContentRequest,
    client: ClientRequest,
    lookup: PeerLookup,
    first: Peer,
  ): Promise<Served> {
    const path = pathFor(req)
    const headers: Record<string, string> = {}
    if (client.accept !== undefined) headers.accept = client.accept
    const win = await race(
      lookup,
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
        try {
          verifyBytes(bytes, claimed)
        } catch (err) {
          this.corrupt(peer, claimed, err as Error)
          throw err
        }
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

  /**
   * Blobs stream: hedged for the headers, resumed with Range from another peer on failure, and hashed on
   * the way. Every byte relayed is checked against the digest, ranges included: a range is served from the
   * whole blob, hashed from byte 0, and its last chunk goes out only once the digest matched. The size comes
   * from containerd's own download when it has one, so a peer cannot claim a different length.
   *
   * What a corrupt peer can still do: when a mismatch shows at the end of a streamed blob, containerd already
   * holds the bytes before the last chunk. It never commits them (its commit checks the digest, and the
   * short body we send makes it resume first); we discard its download so the next attempt starts clean
   * instead of resuming a poisoned file forever, and skip that peer for the digest from then on.
   */
  private async blob(
    req: ContentRequest,
    client: ClientRequest,
    lookup: PeerLookup,
    first: Peer,
    firstAttempt?: {
      peer: string
      headers: Record<string, string>
      headersTimeoutMs: number
      expected: number | undefined
    },
  ): Promise<Served> {
    const { digest } = req.reference as { digest: Digest }
    const path = pathFor(req)
    const rangeHeader =
      client.range !== undefined && /^bytes=\d*-\d*$/.test(client.range.trim())
        ? client.range.trim()
        : undefined
    const expected =
      firstAttempt !== undefined ? firstAttempt.expected : await this.expectedSize(digest, client.signal)
    // with the size known, a range past the end is answered before asking anyone (416, as locally)
    if (expected !== undefined) parseRangeHeader(rangeHeader, expected)
    const failedInRace = new Set<string>()
    const win = await race(
      lookup,
      first,
      async (peer, signal) => {
        const special = firstAttempt?.peer === peer.id ? firstAttempt : undefined
        const res = await this.request(peer, path, {
          method: client.method,
          signal,
          headers: special?.headers,
          headersTimeoutMs: special?.headersTimeoutMs,
        })
        const sizeBytes = Number(res.headers['content-length'])
        if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
          res.body.destroy()
          throw new PeerUnavailableError(`peer ${peer.id} sent no usable length`)
        }
        if (expected !== undefined && sizeBytes !== expected) {
          res.body.destroy()
          const err = new PeerUnavailableError(
            `peer ${peer.id} claims ${sizeBytes} bytes for ${digest}; the pull expects ${expected}`,
          )
          this.corrupt(peer, digest, err)
          throw err
        }
        return { res, sizeBytes }
      },
      {
        hedgeDelayMs: this.hedge.ms,
        signal: client.signal,
        onFailure: (peer, err) => {
          failedInRace.add(peer.id)
          this.onFailure(peer, err)
        },
      },
    )
    const { res, sizeBytes } = win.value
    const d = { digest, mediaType: 'application/octet-stream', sizeBytes }
    let range: { start: number; end?: number } | undefined
    try {
      range = sizeBytes === 0 ? undefined : parseRangeHeader(rangeHeader, sizeBytes)
    } catch (err) {
      res.body.destroy()
      win.abort()
      throw err
    }
    const start = range?.start ?? 0
    const end = range?.end ?? sizeBytes - 1
    const headers = range === undefined ? contentHeaders(d) : partialHeaders(d, start, end)
    const status = range === undefined ? 200 : 206
    if (client.method === 'HEAD' || sizeBytes === 0) {
      res.body.destroy()
      win.abort()
      return { source: 'peer', status, headers, digest, peer: win.peer.id }
    }

    const contributors: Peer[] = [win.peer]
    lookup.tried(win.peer)
    const reopen = async (offset: number, signal: AbortSignal): Promise<PeerResponse | undefined> => {
      // other known peers first, then new ones from the lookup, then the ones that failed once; bounded, so
      // two peers failing in turn cannot keep one resume busy
      for (let attempt = 0; attempt < MAX_REOPEN_ATTEMPTS; attempt++) {
        const peer = await lookup.resumeFrom(this.init.peerHeadersTimeoutMs)
        if (peer === undefined || this.suspects.has(digest, peer.id)) return undefined
        lookup.tried(peer)
        try {
          const next = await this.request(peer, path, {
            method: 'GET',
            headers: { range: `bytes=${offset}-${sizeBytes - 1}` },
            signal,
          })
          if (startsAt(next, offset, sizeBytes)) {
            contributors.push(peer)
            return next
          }
          next.body.destroy()
          this.onFailure(peer, new PeerUnavailableError(`peer ${peer.id} ignored Range ${offset}-`))
        } catch (err) {
          if (signal.aborted) return undefined
          this.onFailure(peer, err)
        }
      }
      return undefined
    }
    const body = resumableBody({
      first: res,
      start: 0,
      end: sizeBytes - 1,
      reopen,
      signal: client.signal,
      floorBytesPerSecond: this.init.floorBytesPerSecond,
      floorWindowMs: this.init.floorWindowMs,
      onResume: (from, offset, err) => {
        this.slow(from.peer, digest, err)
        this.log.warn(
          { peer: from.peer.id, offset, err: (err as Error).message, digest },
          'peer body failed; resuming',
        )
      },
    })
    // striping (stripe.ts): a big blob whose peer is slow goes on as parallel ranges from several holders,
    // through the same digest check; not from the herd's elected node (its copy is still arriving)
    const striping =
      firstAttempt === undefined && this.striper?.wants(sizeBytes, digest) === true
        ? this.striping(body, { digest, path, sizeBytes, lookup, failedInRace, contributors, client })
        : undefined
    const out = new PassThrough({ highWaterMark: BLOB_BUFFER_BYTES })
    pipeline(striping?.body ?? body, new VerifyDigest(digest, { start, end }), out)
      .catch((err: Error) => {
        const striped = striping?.switched() === true
        if (!striped) this.slow(contributors.at(-1) as Peer, digest, err)
        if (err.name !== 'DigestMismatchError') return
        // one digest cannot name the peer of a bad stripe: striped, nobody is blamed (stripe.ts)
        if (striped) this.striper?.failed(digest)
        else for (const peer of contributors) this.corrupt(peer, digest, err)
        void this.discardDownload(digest)
      })
      .finally(() => {
        win.abort()
        lookup.close()
      })
    return { source: 'peer', status, headers, body: out, digest, peer: win.peer.id }
  }

  /** The striping hook (stripe.ts): each stripe a signed, deadline-bound Range request, as a resume is. */
  private striping(
    single: Readable,
    b: {
      digest: Digest
      path: string
      sizeBytes: number
      lookup: PeerLookup
      failedInRace: ReadonlySet<string>
      contributors: Peer[]
      client: ClientRequest
    },
  ): { body: Readable; switched(): boolean } {
    const striper = this.striper as Striper
    return striper.adaptive(single, {
      digest: b.digest,
      sizeBytes: b.sizeBytes,
      // the peer serving now, and the other holders
      holders: async (signal) => {
        const peers = await striper.holders(b.lookup, b.contributors.at(-1) as Peer, b.failedInRace, signal)
        for (const p of peers) b.lookup.tried(p)
        return peers
      },
      open: (peer, start, end, signal) =>
        this.request(peer, b.path, {
          method: 'GET',
          headers: { range: `bytes=${start}-${end}` },
          signal,
          readBufferBytes: STRIPE_READ_BYTES,
        }),
      another: async () => {
        const peer = await b.lookup.resumeFrom(this.init.peerHeadersTimeoutMs)
        if (peer === undefined || this.suspects.has(b.digest, peer.id)) return undefined
        b.lookup.tried(peer)
        return peer
      },
      onPeerFailure: (peer, err) => {
        this.slow(peer, b.digest, err)
        this.onFailure(peer, err)
      },
      signal: b.client.signal,
      floorBytesPerSecond: this.init.floorBytesPerSecond,
      floorWindowMs: this.init.floorWindowMs,
    })
  }

  /** Drops containerd's download of `digest`, which received bytes that can never commit. */
  private async discardDownload(digest: Digest): Promise<void> {
    try {
      const signal = AbortSignal.timeout(2000)
      for (const ingest of await this.components.store.ingests({ signal })) {
        if (ingest.expected !== digest) continue
        await this.components.store.abortIngest(ingest.ref, { signal })
        this.log.warn({ digest, ref: ingest.ref }, 'discarded the download that received corrupt bytes')
      }
    } catch (err) {
      this.log.warn({ digest, err: (err as Error).message }, 'could not discard the corrupt download')
    }
  }
}
