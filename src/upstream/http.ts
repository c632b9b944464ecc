import { type Agent, type IncomingHttpHeaders, type IncomingMessage, request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'

export interface UpstreamResponse {
  status: number
  headers: IncomingHttpHeaders
  body: Buffer
}

export interface UpstreamRequestInit {
  method: 'GET' | 'HEAD' | 'POST'
  headers: Record<string, string>
  agent?: Agent
  signal: AbortSignal
  /** A longer body is an error: registries answer tags and tokens in kilobytes. */
  maxBodyBytes: number
  body?: string
}

export class ResponseTooLargeError extends Error {
  override name = 'ResponseTooLargeError'
}

/**
 * One request to a registry or its token realm, body read whole (small by contract). Why node:http and not
 * fetch: per-registry TLS settings (CA, insecure) live in an Agent, which fetch does not take.
 */
export function upstreamRequest(url: URL, init: UpstreamRequestInit): Promise<UpstreamResponse> {
  return new Promise((resolve, reject) => {
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest
    const req = send(url, {
      method: init.method,
      headers: init.headers,
      agent: init.agent,
      signal: init.signal,
    })
    req.once('error', reject)
    req.once('response', (res) => {
      const chunks: Buffer[] = []
      let n = 0
      res.on('data', (c: Buffer) => {
        n += c.length
        if (n > init.maxBodyBytes) {
          req.destroy(
            new ResponseTooLargeError(`response body over ${init.maxBodyBytes} bytes from ${url.host}`),
          )
          return
        }
        chunks.push(c)
      })
      res.once('error', reject)
      res.once('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
      )
    })
    req.end(init.body)
  })
}

export interface UpstreamStream {
  status: number
  headers: IncomingHttpHeaders
  /** The body, unread: the caller consumes or destroys it. */
  body: IncomingMessage
}

/** One request whose body is left to the caller (blobs). Resolves at the response headers. */
export function upstreamStream(
  url: URL,
  init: Omit<UpstreamRequestInit, 'maxBodyBytes' | 'body'>,
): Promise<UpstreamStream> {
  return new Promise((resolve, reject) => {
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest
    const req = send(url, {
      method: init.method,
      headers: init.headers,
      agent: init.agent,
      signal: init.signal,
    })
    req.once('error', reject)
    req.once('response', (res) => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res }))
    req.end()
  })
}
