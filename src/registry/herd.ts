import { createHash } from 'node:crypto'
import { PassThrough, Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { Logger } from 'pino'
import { Counter, Gauge, type Registry } from 'prom-client'
import { type Digest, type DistributionRequest, digestHex } from '../oci/index.js'
import type { Peer, Router } from '../routing/router.js'
import { NotFoundError } from '../store/errors.js'
import type { Store } from '../store/store.js'
import type { BlobAnswer, BlobQuery } from '../upstream/client.js'
import { contentHeaders, parseRangeHeader, partialHeaders } from './headers.js'
import type { ClientRequest } from './local.js'
import { HerdBudget } from './herd-budget.js'
import { BLOB_BUFFER_BYTES, type Served } from './served.js'
import { VerifyDigest } from './verify.js'

type BlobRequest = Extract<DistributionRequest, { kind: 'blob' }>

/** Asks the elected node to fetch a blob from upstream for the herd (peer endpoint only, signed like any peer request). */
export const HERD_HEADER = 'x-kagami-herd'

export interface HerdComponents {
  /** This node's peer id. */
  self: () => string | undefined
  /** Live peers: connected members with a known peer endpoint. */
  router: Pick<Router, 'peers'>
  upstream: { openBlob(query: BlobQuery): Promise<BlobAnswer> }
  store: Store
  /** Marks our own download as in flight, so peers find it while it arrives. */
  expect: (digest: Digest) => void
  /**
   * Fetches from the elected peer with HERD_HEADER (carrying the size this node's pull expects) and a header
   * deadline of `headersTimeoutMs`: verified, resumed (peers.ts).
   */
  fetchFrom: (
    peer: Peer,
    req: BlobRequest,
    client: ClientRequest,
    headersTimeoutMs: number,
  ) => Promise<Served | undefined>
  /**
   * One more look for holders after the elected node did not answer in time: it usually did get the request
   * and the requesters it answered first follow its download, advertised in flight once it has a source.
   */
  lookAgain?: (req: BlobRequest, client: ClientRequest) => Promise<Served | undefined>
  logger: Logger
  metrics: Registry
}

export interface HerdInit {
  /** How long a request waits on coordination before the fast 404 on a quiet node (default 1 s). */
  budgetMs?: number
  /** The most that wait rises to while elected nodes answer slowly (default 3 s; herd-budget.ts). */
  budgetMaxMs?: number
  /** Budget for upstream's response headers, token fetch included (default 5 s): requesters do not wait on it. */
  upstreamHeadersTimeoutMs?: number
  /** A flight whose upstream body makes no progress this long fails (default 10 s). */
  bodyIdleTimeoutMs?: number
  /** How long a finished flight is served from this node's store by request (default 60 s). */
  keepMs?: number
}

const DENIED_TTL_MS = 10 * 60_000
/**
 * How long the elected node waits for upstream before answering a requester that sent its size: enough for a
 * nearby registry to refuse (a clean 404 then), short enough that a loaded node still answers well within the
 * requester's budget. A refusal that comes later ends the body short; the retry gets the 404.
 */
const EARLY_ANSWER_MS = 20
const MAX_DENIED = 4096

interface Flight {
  digest: Digest
  ref: string
  sizeBytes: number
  committed: boolean
  done: Promise<void>
}

function repositoryOf(req: BlobRequest): string {
  return `${req.registry}/${req.repository}`
}

/** Highest random weight: every node computes the same winner from the same live set, no messages. */
export function elect(digest: string, ids: readonly string[]): string | undefined {
  let best: string | undefined
  let bestScore = ''
  for (const id of ids) {
    const score = createHash('sha256').update(`${id}\n${digest}`).digest('hex')
    if (best === undefined || score > bestScore) {
      best = id
      bestScore = score
    }
  }
  return best
}

/**
 * One upstream fetch per blob, cluster-wide (#18). When nobody holds a blob, every node that is asked for it
 * elects the same node among the live members by rendezvous hashing over (peer id, digest); no messages,
 * and a node joining or leaving moves only the digests it wins or held. The elected node fetches the blob
 * from upstream once (anonymous token; a request carrying credentials is private and never coalesced),
 * writes it into its containerd through Content/Write — so it is advertised in flight at once, and ordinary
 * content once committed — and every requester streams it from there as it arrives, verified at the end.
 *
 * Bounded: a requester waits at most the budget (herd-budget.ts: 1 s on a quiet node, never over 3 s) for
 * the elected node's response headers, then looks once more for a node following it; a dead, frozen or slow
 * elected node, a private repository or an unreachable upstream all end in the usual 404, and containerd
 * fetches from upstream itself.
 */
export class Herd {
  private readonly log: Logger
  private readonly flights = new Map<Digest, Promise<Flight | undefined>>()
  /** Flights whose download is open and not yet committed. */
  private readonly arriving = new Set<Digest>()
  private readonly stopController = new AbortController()
  /** Blobs and repositories upstream refused without credentials: not coalesced for a while (bounded). */
  private readonly denied = new Map<string, number>()
  private readonly requests: Counter<'role' | 'result'>
  private readonly flightCount: Counter<'result'>
  private readonly budget: HerdBudget

  constructor(
    private readonly components: HerdComponents,
    private readonly init: HerdInit = {},
  ) {
    this.log = components.logger.child({ component: 'herd' })
    this.budget = new HerdBudget({
      floorMs: this.budgetMs,
      capMs: Math.max(this.budgetMs, init.budgetMaxMs ?? 3000),
    })
    this.requests = new Counter({
      name: 'kagami_herd_requests_total',
      help: 'Blob misses coordinated by the herd, by role (requester: asked the elected node | elected: fetched upstream for itself or a peer) and result (coalesced|followed: from a node following the elected one after it answered late|served|private|unavailable|failed)',
      labelNames: ['role', 'result'],
      registers: [components.metrics],
    })
    const budget = this.budget
    new Gauge({
      name: 'kagami_herd_budget_seconds',
      help: 'How long a blob miss waits for the elected node now (herd-budget.ts: rises while answers are slow)',
      registers: [components.metrics],
      collect() {
        this.set(budget.ms / 1000)
      },
    })
    this.flightCount = new Counter({
      name: 'kagami_herd_flights_total',
      help: 'Upstream fetches this node made for the herd, by result (started|shared|present)',
      labelNames: ['result'],
      registers: [components.metrics],
    })
  }

  private get budgetMs(): number {
    return this.init.budgetMs ?? 1000
  }

  /**
   * The mirror's last resort before a 404: the blob through the elected node, or through this node when it
   * is the one elected. Undefined means "fetch it yourself" (within the budget).
   */
  async fetch(
    req: BlobRequest,
    client: ClientRequest & { authorization?: string },
  ): Promise<Served | undefined> {
    // credentials mean a private repository: containerd fetches it with them, nobody shares it
    if (client.method !== 'GET' || client.authorization !== undefined || !('digest' in req.reference))
      return undefined
    const self = this.components.self()
    if (self === undefined) return undefined
    const live = this.components.router.peers()
    const winner = elect(req.reference.digest, [self, ...live.map((p) => p.id)])
    if (winner === self) return await this.serve(req, client, 'self')
    const peer = live.find((p) => p.id === winner) as Peer
    const budgetMs = this.budget.ms
    const started = performance.now()
    const served = await this.components.fetchFrom(peer, req, client, budgetMs)
    const tookMs = performance.now() - started
    // an answer, or a wait that used the whole budget (a refusal or a 404 says nothing about load)
    if (served !== undefined || tookMs >= budgetMs) this.budget.observe(tookMs)
    // Timed out: when a rollout starts, every node is busy and the elected node answers late, but it answers;
    // the nodes it answered first follow its download by now. One lookup (~20 ms) before the 404 upstream.
    if (served === undefined && tookMs >= budgetMs && !client.signal.aborted) {
      const follower = await this.components.lookAgain?.(req, client)
      this.requests.inc({ role: 'requester', result: follower === undefined ? 'unavailable' : 'followed' })
      return follower
    }
    this.requests.inc({ role: 'requester', result: served === undefined ? 'unavailable' : 'coalesced' })
    return served
  }

  /**
   * Our own containerd asks for a blob this node is already fetching for the herd (peers elected it and asked
   * first): it follows the flight here rather than going round through a peer that follows it.
   */
  async join(
    req: BlobRequest,
    client: ClientRequest & { authorization?: string },
  ): Promise<Served | undefined> {
    if (client.authorization !== undefined || !('digest' in req.reference)) return undefined
    // only a download still arriving: a committed one is ordinary content (or was deleted since)
    if (!this.arriving.has(req.reference.digest)) return undefined
    return await this.serve(req, client, 'self').catch((err: Error) => {
      if (err.name === 'NotFoundError') return undefined
      throw err
    })
  }

  /**
   * Serves a blob from this node's flight for it (started now if there is none): for a peer that elected
   * this node (peer endpoint, HERD_HEADER), or for our own mirror's client. NotFoundError when upstream does
   * not give it anonymously.
   *
   * A peer that sends the size its pull expects (`sizeHint`) gets the response headers within ~20 ms
   * even while upstream has not answered yet: its header deadline is the budget, and upstream (a WAN away, a
   * token fetch first) may take longer. The bytes follow once upstream sends them; a refusal after that
   * point ends the body short and is remembered, so the retry gets the 404.
   */
  async serve(
    req: BlobRequest,
    client: ClientRequest,
    who: 'peer' | 'self' = 'peer',
    sizeHint?: number,
  ): Promise<Served> {
    const digest = (req.reference as { digest: Digest }).digest
    if ((this.denied.get(digest) ?? 0) > Date.now() || (this.denied.get(repositoryOf(req)) ?? 0) > Date.now())
      throw new NotFoundError(`blob ${digest}: upstream refuses it without credentials`)
    const flight = this.flightFor(req)
    const early = who === 'peer' && sizeHint !== undefined && sizeHint > 0
    // Our own containerd waits for the flight as it would wait for upstream itself: the flight is bounded by
    // upstream's header deadline, and it is not coordination (a budget here sent our own pull upstream a
    // second time whenever this loaded node was slower than 300 ms to open the blob).
    const waitMs = early ? Math.min(EARLY_ANSWER_MS, this.budgetMs / 3) : undefined
    let timer: NodeJS.Timeout | undefined
    const f =
      waitMs === undefined
        ? await flight
        : await Promise.race([
            flight,
            new Promise<'pending'>((resolve) => (timer = setTimeout(() => resolve('pending'), waitMs))),
          ])
    clearTimeout(timer)
    if (f === undefined) {
      this.requests.inc({ role: 'elected', result: 'unavailable' })
      throw new NotFoundError(`blob ${digest}: upstream gave it to nobody here`)
    }
    this.requests.inc({ role: 'elected', result: 'served' })
    const sizeBytes = f === 'pending' ? (sizeHint as number) : f.sizeBytes
    const range = parseRangeHeader(client.range, sizeBytes)
    const end = range?.end ?? sizeBytes - 1
    const d = { digest, mediaType: 'application/octet-stream', sizeBytes }
    const headers = range === undefined ? contentHeaders(d) : partialHeaders(d, range.start, end)
    const status = range === undefined ? (200 as const) : (206 as const)
    const inFlight = f === 'pending' || !f.committed
    const served: Served = { source: 'local', status, headers, digest, inFlight }
    if (client.method === 'HEAD') return served
    if (f !== 'pending') return { ...served, body: await this.body(f, range, client.signal, who === 'self') }
    const open = async (): Promise<Readable> => {
      const later = await flight
      if (later === undefined) throw new NotFoundError(`blob ${digest}: upstream did not give it`)
      if (later.sizeBytes !== sizeBytes)
        throw new NotFoundError(`blob ${digest} is ${later.sizeBytes} bytes upstream, not ${sizeBytes}`)
      return await this.body(later, range, client.signal, false)
    }
    async function* lazy(): AsyncGenerator<Buffer> {
      for await (const chunk of await open()) yield chunk as Buffer
    }
    return { ...served, body: Readable.from(lazy(), { objectMode: false, highWaterMark: BLOB_BUFFER_BYTES }) }
  }

  private flightFor(req: BlobRequest): Promise<Flight | undefined> {
    const digest = (req.reference as { digest: Digest }).digest
    const known = this.flights.get(digest)
    if (known !== undefined) {
      this.flightCount.inc({ result: 'shared' })
      return known
    }
    const flight = this.start(req)
    this.flights.set(digest, flight)
    void flight.then((f) => {
      if (f === undefined && this.flights.get(digest) === flight) this.flights.delete(digest)
    })
    return flight
  }

  /**
   * The flight's bytes: from the download while it is written, from the store once committed. For this
   * node's own containerd (`verify`) the whole blob is hashed on the way, as for any relayed body: the bytes
   * come from upstream through our writer, and a bad write must end short, not commit wrong. (A peer
   * verifies what it gets itself.)
   */
  private async body(
    f: Flight,
    range: { start: number; end?: number } | undefined,
    signal: AbortSignal,
    verify: boolean,
  ): Promise<Readable> {
    const options = { signal, range: verify ? undefined : range, sizeBytes: f.sizeBytes }
    let body: Readable | undefined
    if (!f.committed) {
      body = await this.components.store
        .readIngest(f.ref, { ...options, idleTimeoutMs: this.init.bodyIdleTimeoutMs ?? 10_000 })
        .catch((err: Error) => {
          if (err.name !== 'NotFoundError') throw err
          return undefined // committed meanwhile
        })
    }
    body ??= await this.components.store.read(f.digest, options)
    if (!verify) return body
    const out = new PassThrough({ highWaterMark: BLOB_BUFFER_BYTES })
    const window = { start: range?.start ?? 0, end: range?.end ?? f.sizeBytes - 1 }
    pipeline(body, new VerifyDigest(f.digest, window), out).catch((err: Error) =>
      this.log.warn(
        { digest: f.digest, err: err.message },
        'herd flight sent bytes that failed verification',
      ),
    )
    return out
  }

  /** Opens upstream and starts writing into containerd; resolves once readers can follow the download. */
  private async start(req: BlobRequest): Promise<Flight | undefined> {
    const digest = (req.reference as { digest: Digest }).digest
    const signal = this.stopController.signal
    const ref = `kagami-herd-${digestHex(digest)}`
    // Held here already but not advertised (else the local path had served it): perhaps an excluded image's
    // blob asked for under another name. Serve only what upstream gives for this request, so: not coalesced.
    // Asked beside upstream, not before it: a containerd busy with a rollout took up to its 1 s deadline.
    const present = this.components.store.stat(digest, { signal: AbortSignal.timeout(1000) }).then(
      () => true,
      () => false,
    )
    const opening = this.components.upstream
      .openBlob({
        registry: req.registry,
        repository: req.repository,
        digest,
        headersTimeoutMs: this.init.upstreamHeadersTimeoutMs ?? 5000,
        bodyIdleTimeoutMs: this.init.bodyIdleTimeoutMs ?? 10_000,
        signal,
      })
      .catch((err: Error) => ({
        kind: 'unavailable' as const,
        reason: 'unreachable' as const,
        detail: err.message,
      }))
    const [held, answer] = await Promise.all([present, opening])
    if (held) {
      if (answer.kind === 'found') answer.body.destroy()
      this.flightCount.inc({ result: 'present' })
      return undefined
    }
    if (answer.kind !== 'found') {
      if (answer.kind === 'denied') {
        this.requests.inc({ role: 'elected', result: 'private' })
        // the other blobs of a private image are private too: refused at once, not after a short body each
        this.deny(digest)
        this.deny(repositoryOf(req))
      }
      this.log.debug({ digest, answer: answer.kind }, 'upstream did not give the blob anonymously')
      return undefined
    }
    this.flightCount.inc({ result: 'started' })
    this.components.expect(digest)
    let isOpen = false
    let opened!: () => void
    const open = new Promise<void>((resolve) => {
      opened = () => {
        isOpen = true
        this.arriving.add(digest)
        resolve()
      }
    })
    const flight: Flight = {
      digest,
      ref,
      sizeBytes: answer.sizeBytes,
      committed: false,
      done: Promise.resolve(),
    }
    flight.done = this.components.store
      .write(ref, { expected: digest, sizeBytes: answer.sizeBytes }, answer.body, { signal, onOpen: opened })
      .then(() => {
        this.arriving.delete(digest)
        flight.committed = true
        this.log.debug({ digest, bytes: answer.sizeBytes }, 'herd flight committed')
        this.keep(flight)
      })
      .catch((err: Error) => {
        this.arriving.delete(digest)
        answer.body.destroy()
        this.flights.delete(digest)
        if (!signal.aborted) this.log.warn({ digest, err: err.message }, 'herd flight failed')
        void this.components.store
          .abortIngest(ref, { signal: AbortSignal.timeout(2000) })
          .catch(() => undefined)
      })
    // followable once the download exists; a write that ends first (a copy was already there, or it failed)
    await Promise.race([open, flight.done])
    return isOpen || flight.committed ? flight : undefined
  }

  private deny(key: string): void {
    this.denied.delete(key)
    if (this.denied.size >= MAX_DENIED) {
      const oldest = this.denied.keys().next().value
      if (oldest !== undefined) this.denied.delete(oldest)
    }
    this.denied.set(key, Date.now() + DENIED_TTL_MS)
  }

  /** A finished flight answers requests from the store a while (its blob may not be advertised yet). */
  private keep(flight: Flight): Flight {
    const t = setTimeout(() => {
      if (this.flights.get(flight.digest) !== undefined) this.flights.delete(flight.digest)
    }, this.init.keepMs ?? 60_000)
    t.unref()
    return flight
  }

  stop(): void {
    this.budget.stop()
    this.stopController.abort()
  }
}
