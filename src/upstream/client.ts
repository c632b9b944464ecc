import { createHash } from 'node:crypto'
import { type Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { anySignal } from 'any-signal'
import type { Logger } from 'pino'
import { Counter, Histogram, type Registry } from 'prom-client'
import { type Digest, isDigest } from '../oci/index.js'
import { parseChallenge } from './challenge.js'
import type { Endpoint, Endpoints } from './endpoints.js'
import { upstreamRequest, type UpstreamResponse, upstreamStream, type UpstreamStream } from './http.js'
import { fetchAnonymousToken, TokenCache, UpstreamStatusError } from './tokens.js'

/** Why the upstream gave no answer; the label of the fallback metric. */
export type UnavailableReason =
  'backoff' | 'timeout' | 'unreachable' | 'server-error' | 'rate-limited' | 'bad-response'

/** What the upstream registry answers when it does not hand the content over. */
type NoContent =
  | { kind: 'not-found' }
  /** 401/403: the repository needs credentials the request did not carry. */
  | { kind: 'denied'; status: number }
  | { kind: 'unavailable'; reason: UnavailableReason; detail: string }

/** What the upstream registry says about a tag. Outcomes are values: all of them are normal traffic. */
export type TagAnswer = { kind: 'found'; digest: Digest; mediaType?: string } | NoContent

export interface TagQuery {
  registry: string
  repository: string
  tag: string
  /** The client's `Accept`, forwarded: a registry answers 404 for an index the client does not accept. */
  accept?: string
  /** The client's own `Authorization`, forwarded as is; no anonymous token is fetched then. */
  authorization?: string
  signal?: AbortSignal
}

/** What the upstream registry answers for a blob. */
export type BlobAnswer = { kind: 'found'; sizeBytes: number; body: Readable } | NoContent

export interface BlobQuery {
  registry: string
  repository: string
  digest: Digest
  /** The client's own `Authorization`, forwarded as is; no anonymous token is fetched then. */
  authorization?: string
  /** Budget until the response headers, token fetch and redirects included. */
  headersTimeoutMs: number
  /** The body fails when it makes no progress this long. */
  bodyIdleTimeoutMs?: number
  /** Ends the body too. */
  signal?: AbortSignal
}

export interface UpstreamClientComponents {
  endpoints: Endpoints
  logger: Logger
  metrics: Registry
  /** Milliseconds on a monotonic-enough clock; tests pass their own to expire tokens and back-offs. */
  now?: () => number
}

export interface UpstreamClientInit {
  /** Budget for one tag lookup, token fetch included. */
  tagTimeoutMs: number
  /** After a failure, skip the upstream this long; any answer from it clears the back-off. */
  backoffMs: number
}

// Sent when the client sent no Accept: every manifest type, so an index is found (distribution 2.8
// answers 404 for an index unless Accept lists it).
const DEFAULT_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ')
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024
const REDIRECTS = new Set([301, 302, 303, 307, 308])
const MAX_REDIRECTS = 3
const MAX_REGISTRIES = 1024

class UpstreamMetrics {
  readonly requests: Counter<'result'>
  readonly seconds: Histogram<'result'>
  readonly blobs: Counter<'result'>
  readonly blobBytes: Counter
  constructor(registry: Registry) {
    this.blobs = new Counter({
      name: 'kagami_upstream_blob_requests_total',
      help: 'Blobs kagami itself fetched from an upstream registry (the herd pull-through), by result (found|not-found|denied|backoff|timeout|unreachable|server-error|rate-limited|bad-response)',
      labelNames: ['result'],
      registers: [registry],
    })
    this.blobBytes = new Counter({
      name: 'kagami_upstream_blob_bytes_total',
      help: 'Blob bytes kagami itself received from upstream registries (the herd pull-through; containerd’s own fetches are not counted)',
      registers: [registry],
    })
    this.requests = new Counter({
      name: 'kagami_upstream_tag_requests_total',
      help: 'Tag lookups at the upstream registry by result (found|not-found|denied|backoff|timeout|unreachable|server-error|rate-limited|bad-response)',
      labelNames: ['result'],
      registers: [registry],
    })
    this.seconds = new Histogram({
      name: 'kagami_upstream_tag_duration_seconds',
      help: 'Time of a tag lookup at the upstream registry (token fetch included; back-offs not counted)',
      labelNames: ['result'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    })
  }
}

function header(res: Pick<UpstreamResponse, 'headers'>, name: string): string | undefined {
  const v = res.headers[name]
  return Array.isArray(v) ? v[0] : v
}

/**
 * Asks upstream registries what a tag points to: a HEAD within a short budget, speaking the distribution
 * token protocol (anonymous bearer tokens cached per scope until they expire, or the client's own
 * Authorization), with a back-off per registry after a failure so an outage costs one budget, not one per
 * pull.
 */
export class UpstreamClient {
  private readonly log: Logger
  private readonly metrics: UpstreamMetrics
  private readonly now: () => number
  private readonly tokens: TokenCache
  /** Registry → time until which it is skipped. */
  private readonly backoffUntil = new Map<string, number>()
  /** Registries whose last lookup failed (for logging the change, not every failure). */
  private readonly failing = new Set<string>()

  constructor(
    private readonly components: UpstreamClientComponents,
    private readonly init: UpstreamClientInit,
  ) {
    this.log = components.logger.child({ component: 'upstream' })
    this.metrics = new UpstreamMetrics(components.metrics)
    this.now = components.now ?? (() => performance.now())
    this.tokens = new TokenCache({ now: this.now })
  }

  /** The last tag lookup at `registry` failed, and none has answered since. */
  isDown(registry: string): boolean {
    return this.failing.has(registry)
  }

  async resolveTag(query: TagQuery): Promise<TagAnswer> {
    const until = this.backoffUntil.get(query.registry)
    if (until !== undefined && until > this.now()) {
      this.metrics.requests.inc({ result: 'backoff' })
      return { kind: 'unavailable', reason: 'backoff', detail: `${query.registry} failed recently` }
    }
    const started = performance.now()
    const budget = AbortSignal.timeout(this.init.tagTimeoutMs)
    const signal = anySignal([budget, query.signal])
    let answer: TagAnswer
    try {
      answer = await this.ask(this.components.endpoints.endpoint(query.registry), query, signal)
    } catch (err) {
      if (query.signal?.aborted === true) throw err // the client went away: nothing to decide
      answer = this.failure(err, budget.aborted)
    } finally {
      signal.clear()
    }
    if (answer.kind === 'unavailable') {
      this.backoffUntil.set(query.registry, this.now() + this.init.backoffMs)
      // bounded: one entry per failing registry name; a flood of invented names drops the oldest
      if (this.backoffUntil.size > MAX_REGISTRIES)
        this.backoffUntil.delete(this.backoffUntil.keys().next().value as string)
      if (this.failing.size > MAX_REGISTRIES)
        this.failing.delete(this.failing.values().next().value as string)
      // Once per outage, not per request: a wrong scheme or CA in --registries must not fail silently.
      if (!this.failing.has(query.registry)) {
        this.failing.add(query.registry)
        this.log.warn(
          { registry: query.registry, reason: answer.reason, err: answer.detail },
          'upstream registry did not answer a tag lookup; tags come from this node and peers until it does',
        )
      }
    } else {
      this.backoffUntil.delete(query.registry)
      if (this.failing.delete(query.registry))
        this.log.info({ registry: query.registry }, 'upstream registry answers tag lookups again')
    }
    const result = answer.kind === 'unavailable' ? answer.reason : answer.kind
    this.metrics.requests.inc({ result })
    this.metrics.seconds.observe({ result }, (performance.now() - started) / 1000)
    return answer
  }

  private failure(err: unknown, overBudget: boolean): TagAnswer {
    const e = err as Error & { code?: string }
    if (overBudget)
      return { kind: 'unavailable', reason: 'timeout', detail: `no answer in ${this.init.tagTimeoutMs} ms` }
    if (e.name === 'UpstreamStatusError') {
      const status = (e as UpstreamStatusError).status
      const reason = status === 429 ? 'rate-limited' : status >= 500 ? 'server-error' : 'bad-response'
      return { kind: 'unavailable', reason, detail: e.message }
    }
    if (e.name === 'ResponseTooLargeError')
      return { kind: 'unavailable', reason: 'bad-response', detail: e.message }
    return { kind: 'unavailable', reason: 'unreachable', detail: e.code ?? e.message }
  }

  /**
   * After a 401: an anonymous token for `scope` from the challenge's realm, cached, as an Authorization value;
   * undefined when only credentials would help (a Basic or no challenge, or the realm refused). A cached
   * token the registry refused is dropped first.
   */
  private async anonymousToken(
    endpoint: Endpoint,
    res: Pick<UpstreamResponse, 'headers'>,
    scope: string,
    cacheKey: string,
    signal: AbortSignal,
  ): Promise<string | undefined> {
    this.tokens.delete(cacheKey)
    const challenge = parseChallenge(header(res, 'www-authenticate'))
    // Basic (htpasswd) or no challenge: only credentials would help, and we have none.
    if (challenge?.scheme !== 'bearer') return undefined
    const realm = challenge.params.realm
    try {
      const token = await fetchAnonymousToken(challenge, challenge.params.scope ?? scope, {
        agent: realm !== undefined ? this.components.endpoints.agentFor(endpoint, new URL(realm)) : undefined,
        signal,
        now: this.now,
      })
      this.tokens.set(cacheKey, token)
      return `Bearer ${token.token}`
    } catch (err) {
      if ((err as Error).name === 'TokenDeniedError') return undefined
      throw err
    }
  }

  private async ask(endpoint: Endpoint, query: TagQuery, signal: AbortSignal): Promise<TagAnswer> {
    const url = new URL(`${endpoint.baseUrl}/v2/${query.repository}/manifests/${query.tag}`)
    const scope = `repository:${query.repository}:pull`
    const headers: Record<string, string> = { accept: query.accept ?? DEFAULT_ACCEPT }
    const cacheKey = `${endpoint.registry}|${scope}`
    const forwarded = query.authorization !== undefined
    const cached = forwarded ? undefined : this.tokens.get(cacheKey)
    if (forwarded) headers.authorization = query.authorization as string
    else if (cached !== undefined) headers.authorization = `Bearer ${cached}`

    const head = (): Promise<UpstreamResponse> =>
      upstreamRequest(url, { method: 'HEAD', headers, agent: endpoint.agent, signal, maxBodyBytes: 0 })
    let res = await head()
    if (res.status === 401 && !forwarded) {
      const bearer = await this.anonymousToken(endpoint, res, scope, cacheKey, signal)
      if (bearer === undefined) return { kind: 'denied', status: 401 }
      headers.authorization = bearer
      res = await head()
    }
    if (res.status === 401 || res.status === 403) return { kind: 'denied', status: res.status }
    if (res.status === 404) return { kind: 'not-found' }
    if (res.status !== 200) {
      throw new UpstreamStatusError(`${endpoint.registry} answered ${res.status} for a tag`, res.status)
    }
    const mediaType = header(res, 'content-type')?.split(';')[0]?.trim()
    const digest = header(res, 'docker-content-digest')
    if (digest !== undefined && isDigest(digest)) return { kind: 'found', digest, mediaType }
    // Some registries leave the digest out of HEAD; the manifest's own hash is the digest then.
    const got = await upstreamRequest(url, {
      method: 'GET',
      headers,
      agent: endpoint.agent,
      signal,
      maxBodyBytes: MAX_MANIFEST_BYTES,
    })
    if (got.status !== 200)
      throw new UpstreamStatusError(`${endpoint.registry} answered ${got.status} for a tag`, got.status)
    const hashed = `sha256:${createHash('sha256').update(got.body).digest('hex')}` as Digest
    this.log.debug({ registry: endpoint.registry }, 'registry sent no digest on HEAD; hashed the manifest')
    return { kind: 'found', digest: hashed, mediaType: header(got, 'content-type')?.split(';')[0]?.trim() }
  }

  /**
   * Opens a blob at the upstream registry, with the same token protocol and back-off as tags: an anonymous
   * token (or the client's Authorization), redirects followed (registries hand blobs to storage hosts; the
   * credentials stay with the registry's host). Only the headers are bounded by `headersTimeoutMs`.
   */
  async openBlob(query: BlobQuery): Promise<BlobAnswer> {
    // A registry the tag path found down is skipped here too; a blob's own failures set no back-off: the
    // herd's caller falls back to containerd's own fetch, and tags must not start failing over because of it.
    const until = this.backoffUntil.get(query.registry)
    if (until !== undefined && until > this.now()) {
      this.metrics.blobs.inc({ result: 'backoff' })
      return { kind: 'unavailable', reason: 'backoff', detail: `${query.registry} failed recently` }
    }
    const budget = AbortSignal.timeout(query.headersTimeoutMs)
    const headersSignal = anySignal([budget, query.signal])
    const bodySignal = new AbortController()
    const signal = anySignal([bodySignal.signal, query.signal])
    let answer: BlobAnswer
    try {
      answer = await this.blob(query, signal, headersSignal)
    } catch (err) {
      bodySignal.abort()
      signal.clear()
      if (query.signal?.aborted === true) throw err
      const failed = this.failure(err, budget.aborted)
      answer =
        failed.kind === 'unavailable' ? failed : { kind: 'unavailable', reason: 'bad-response', detail: '' }
    } finally {
      headersSignal.clear()
    }
    this.metrics.blobs.inc({ result: answer.kind === 'unavailable' ? answer.reason : answer.kind })
    if (answer.kind !== 'found') {
      bodySignal.abort()
      signal.clear()
      return answer
    }
    // counted on the way through (a 'data' listener on the body itself would start it flowing unread)
    const counted = new Transform({
      transform: (chunk: Buffer, _enc, cb) => {
        this.metrics.blobBytes.inc(chunk.length)
        cb(null, chunk)
      },
    })
    pipeline(answer.body, counted).catch(() => undefined) // an error destroys both; the reader sees it
    counted.once('close', () => signal.clear())
    answer = { ...answer, body: counted }
    return answer
  }

  private async blob(query: BlobQuery, signal: AbortSignal, headersSignal: AbortSignal): Promise<BlobAnswer> {
    const endpoint = this.components.endpoints.endpoint(query.registry)
    const scope = `repository:${query.repository}:pull`
    const cacheKey = `${endpoint.registry}|${scope}`
    const forwarded = query.authorization !== undefined
    const headers: Record<string, string> = {}
    if (forwarded) headers.authorization = query.authorization as string
    else {
      const cached = this.tokens.get(cacheKey)
      if (cached !== undefined) headers.authorization = `Bearer ${cached}`
    }
    let url = new URL(`${endpoint.baseUrl}/v2/${query.repository}/blobs/${query.digest}`)
    const open = async (): Promise<UpstreamStream> => {
      // the request lives as long as the body (signal); its headers within the budget (headersSignal)
      const pending = upstreamStream(url, {
        method: 'GET',
        headers: url.origin === new URL(endpoint.baseUrl).origin ? headers : {},
        agent: this.components.endpoints.agentFor(endpoint, url),
        signal,
      })
      const timedOut = new Promise<never>((_, reject) => {
        headersSignal.addEventListener('abort', () => reject(new Error('no answer in the budget')), {
          once: true,
        })
      })
      timedOut.catch(() => undefined) // settled by the race, or too late to matter
      pending.catch(() => undefined)
      return await Promise.race([pending, timedOut])
    }
    let res = await open()
    if (res.status === 401 && !forwarded) {
      res.body.destroy()
      const bearer = await this.anonymousToken(endpoint, res, scope, cacheKey, headersSignal)
      if (bearer === undefined) return { kind: 'denied', status: 401 }
      headers.authorization = bearer
      res = await open()
    }
    for (let hops = 0; REDIRECTS.has(res.status) && hops < MAX_REDIRECTS; hops++) {
      res.body.destroy()
      const location = header(res, 'location')
      if (location === undefined) throw new UpstreamStatusError(`redirect without a location`, res.status)
      url = new URL(location, url)
      res = await open()
    }
    if (res.status !== 200) res.body.destroy()
    if (res.status === 401 || res.status === 403) return { kind: 'denied', status: res.status }
    if (res.status === 404) return { kind: 'not-found' }
    if (res.status !== 200)
      throw new UpstreamStatusError(`${endpoint.registry} answered ${res.status} for a blob`, res.status)
    const sizeBytes = Number(header(res, 'content-length'))
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
      res.body.destroy()
      throw new UpstreamStatusError(`${endpoint.registry} sent a blob without a length`, res.status)
    }
    const body = res.body
    const idleMs = query.bodyIdleTimeoutMs
    if (idleMs !== undefined)
      body.setTimeout(idleMs, () =>
        body.destroy(new UpstreamStatusError(`${endpoint.registry}: blob body idle for ${idleMs} ms`, 0)),
      )
    return { kind: 'found', sizeBytes, body }
  }

  /** Anonymous tokens held (for tests and status). */
  get cachedTokens(): number {
    return this.tokens.size
  }

  close(): void {
    this.components.endpoints.close()
  }
}
