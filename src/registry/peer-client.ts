import type { Readable } from 'node:stream'
import { anySignal } from 'any-signal'
import type { Dispatcher } from 'undici'
import type { Peer } from '../routing/router.js'
import { DeadlineExceededError, PeerUnavailableError } from './errors.js'

export interface PeerRequestInit {
  method: 'GET' | 'HEAD'
  /** Path and query, e.g. `/v2/library/nginx/blobs/sha256:…?ns=docker.io`. */
  path: string
  headers?: Record<string, string>
  signal?: AbortSignal
  /** Deadline for the response headers (a silent peer must not hold the pull). */
  headersTimeoutMs: number
  /** Abort a body that makes no progress for this long. */
  bodyIdleTimeoutMs: number
}

export interface PeerResponse {
  peer: Peer
  status: number
  headers: Record<string, string>
  body: Readable
  /** Time to response headers. */
  latencyMs: number
}

/**
 * One request to a peer's endpoint. Resolves once headers arrive with 200/206; anything else (404, 5xx,
 * timeout, reset) rejects, and the body is destroyed. Errors carry the peer in the message for the warn log.
 */
export async function peerRequest(
  agent: Dispatcher,
  peer: Peer,
  init: PeerRequestInit,
): Promise<PeerResponse> {
  const headersDeadline = new AbortController()
  const timer = setTimeout(
    () =>
      headersDeadline.abort(
        new DeadlineExceededError(`peer ${peer.id} sent no headers in ${init.headersTimeoutMs} ms`),
      ),
    init.headersTimeoutMs,
  )
  const signal = anySignal([init.signal, headersDeadline.signal])
  const started = performance.now()
  let res: Dispatcher.ResponseData
  try {
    res = await agent.request({
      origin: peer.url,
      path: init.path,
      method: init.method,
      headers: init.headers,
      signal,
      headersTimeout: init.headersTimeoutMs + 1000, // our own timer is the precise one
      bodyTimeout: init.bodyIdleTimeoutMs,
      highWaterMark: 1024 * 1024,
    })
  } catch (err) {
    clearTimeout(timer)
    signal.clear()
    if (headersDeadline.signal.aborted) throw headersDeadline.signal.reason as Error
    if (init.signal?.aborted === true) throw err
    throw new PeerUnavailableError(`peer ${peer.id} (${peer.url}): ${(err as Error).message}`)
  }
  clearTimeout(timer)
  const latencyMs = performance.now() - started
  const body = res.body as unknown as Readable
  body.once('close', () => signal.clear())
  if (res.statusCode !== 200 && res.statusCode !== 206) {
    body.destroy()
    throw new PeerUnavailableError(`peer ${peer.id} (${peer.url}) answered ${res.statusCode}`)
  }
  const headers: Record<string, string> = {}
  for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') headers[k] = v
  return { peer, status: res.statusCode, headers, body, latencyMs }
}
