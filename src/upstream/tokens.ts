import type { Agent } from 'node:http'
import type { Challenge } from './challenge.js'
import { upstreamRequest } from './http.js'

/** A registry or token realm answered with a status that is neither success nor "not allowed". */
export class UpstreamStatusError extends Error {
  override name = 'UpstreamStatusError'
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message)
  }
}

/** The token endpoint refused an anonymous token (401/403): the repository needs credentials. */
export class TokenDeniedError extends Error {
  override name = 'TokenDeniedError'
}

// The distribution token spec: a token without `expires_in` is valid for 60 s.
const DEFAULT_EXPIRES_IN_S = 60
const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024

export interface Token {
  token: string
  /** When to stop using it (ms, on the cache's clock), a little before the registry would refuse it. */
  expiresAtMs: number
}

/**
 * Anonymous bearer tokens by realm, service and scope, each kept until shortly before it expires. Bounded:
 * the oldest entry goes first when full (one entry per repository pulled by tag, so a few hundred at most).
 */
export class TokenCache {
  private readonly tokens = new Map<string, Token>()

  constructor(private readonly init: { now: () => number; maxEntries?: number }) {}

  get(key: string): string | undefined {
    const t = this.tokens.get(key)
    if (t === undefined) return undefined
    if (t.expiresAtMs <= this.init.now()) {
      this.tokens.delete(key)
      return undefined
    }
    return t.token
  }

  set(key: string, token: Token): void {
    this.tokens.delete(key)
    this.tokens.set(key, token)
    const max = this.init.maxEntries ?? 1024
    while (this.tokens.size > max) this.tokens.delete(this.tokens.keys().next().value as string)
  }

  delete(key: string): void {
    this.tokens.delete(key)
  }

  get size(): number {
    return this.tokens.size
  }
}

/**
 * Asks a token realm for an anonymous token (`GET realm?service=…&scope=…`, no credentials). Throws
 * TokenDeniedError on 401/403, UpstreamStatusError on any other non-200, and the transport's error when the
 * realm cannot be reached.
 */
export async function fetchAnonymousToken(
  challenge: Challenge,
  scope: string,
  init: { agent?: Agent; signal: AbortSignal; now: () => number },
): Promise<Token> {
  const realm = challenge.params.realm
  if (realm === undefined || !/^https?:\/\//.test(realm))
    throw new UpstreamStatusError(`bearer challenge without a usable realm`, 401)
  const url = new URL(realm)
  if (challenge.params.service !== undefined) url.searchParams.set('service', challenge.params.service)
  url.searchParams.set('scope', scope)
  const res = await upstreamRequest(url, {
    method: 'GET',
    headers: { accept: 'application/json' },
    agent: init.agent,
    signal: init.signal,
    maxBodyBytes: MAX_TOKEN_RESPONSE_BYTES,
  })
  if (res.status === 401 || res.status === 403)
    throw new TokenDeniedError(`token realm ${url.host} refused an anonymous token (${res.status})`)
  if (res.status !== 200)
    throw new UpstreamStatusError(`token realm ${url.host} answered ${res.status}`, res.status)
  let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown }
  try {
    doc = JSON.parse(res.body.toString('utf8')) as typeof doc
  } catch {
    throw new UpstreamStatusError(`token realm ${url.host} sent no JSON`, res.status)
  }
  const token = typeof doc.token === 'string' ? doc.token : doc.access_token
  if (typeof token !== 'string' || token === '')
    throw new UpstreamStatusError(`token realm ${url.host} sent no token`, res.status)
  const expiresInS =
    typeof doc.expires_in === 'number' && doc.expires_in > 0 ? doc.expires_in : DEFAULT_EXPIRES_IN_S
  // Stop using it a little early (up to 10 s, never more than half its life) so it never expires in flight.
  const marginMs = Math.min(10_000, (expiresInS * 1000) / 2)
  return { token, expiresAtMs: init.now() + expiresInS * 1000 - marginMs }
}
