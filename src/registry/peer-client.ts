/**
 * A minimal HTTP/1.1 GET/HEAD client for kagami peer endpoints, on a plain socket that reads into big
 * buffers. Why not undici or node:http: both read 64 KiB at a time, and on this 2-core machine relaying a
 * blob through the mirror then ran at ~0.35 GiB/s; reading into big buffers (`onread`) doubled that
 * (bench/mirror.ts). With a pool, each socket read lands in a pool buffer that goes downstream as is (no
 * copy, no allocation) and comes back once the mirror's response wrote it (buffer-pool.ts).
 * It speaks only what our peer endpoint sends: one response with Content-Length.
 *
 * One connection per request (`Connection: close`), on purpose: a relayed blob pays one loopback/LAN
 * connect (well under a millisecond) against seconds of body, and `--cpu-prof` of the relay shows its time
 * in the digest and the two socket copies, not in connection setup (issue #14, bench/mirror.ts). A fresh
 * connection also means a failed or aborted body can never leave a half-read socket in a pool.
 */
import { connect, type Socket } from 'node:net'
import { Readable } from 'node:stream'
import type { BufferPool } from '../buffer-pool.js'
import type { Peer } from '../routing/router.js'
import { DeadlineExceededError, PeerUnavailableError } from './errors.js'
import { BLOB_BUFFER_BYTES } from './served.js'
import { abortError } from '../abort.js'

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
  /** Socket read size without a pool: small for manifests (default BLOB_BUFFER_BYTES). */
  readBufferBytes?: number
  /** Blobs: read into pool buffers, passed on without a copy (the reader recycles them). */
  pool?: BufferPool
}

export interface PeerResponse {
  peer: Peer
  status: number
  headers: Record<string, string>
  body: Readable
  /** Time to response headers. */
  latencyMs: number
}

const MAX_HEADER_BYTES = 64 * 1024
/** Socket reads buffered ahead of the consumer, with a pool. */
const POOLED_READ_AHEAD_CHUNKS = 2
const HEADER_END = Buffer.from('\r\n\r\n')

/**
 * One request to a peer. Resolves once headers arrive with 200/206; anything else (404, 5xx, timeout,
 * reset) rejects and closes the connection. The body stream errors if the peer stalls or closes early.
 */
export function peerRequest(peer: Peer, init: PeerRequestInit): Promise<PeerResponse> {
  return new Promise<PeerResponse>((resolve, reject) => {
    const url = new URL(peer.url)
    const started = performance.now()
    let header: Buffer = Buffer.alloc(0)
    let body: Readable | undefined
    let remaining = 0
    let settled = false
    const signal = init.signal
    const pool = init.pool
    // the pool buffer waiting for the next read: back to the pool when the socket closes
    let spare: Buffer | undefined

    const fail = (err: Error): void => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      socket.destroy()
      if (!settled) {
        settled = true
        reject(err)
      } else if (body !== undefined && !body.destroyed && remaining > 0) {
        body.destroy(err)
      }
    }
    const onAbort = (): void => fail(abortError(signal as AbortSignal))
    if (signal?.aborted === true) {
      reject(abortError(signal))
      return
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    // Timers run before the I/O callbacks of the same loop turn: after this process was kept off the CPU,
    // headers that arrived in time would lose to the deadline. One turn later they have been read.
    const timer = setTimeout(
      () =>
        setImmediate(() => {
          if (!settled)
            fail(new DeadlineExceededError(`peer ${peer.id} sent no headers in ${init.headersTimeoutMs} ms`))
        }),
      init.headersTimeoutMs,
    )

    const onBody = (chunk: Buffer): void => {
      if (body === undefined || remaining <= 0) return
      const part = chunk.length > remaining ? chunk.subarray(0, remaining) : chunk
      remaining -= part.length
      if (!body.push(pool === undefined ? part : pool.lend(part))) socket.pause()
      if (remaining === 0) {
        body.push(null)
        signal?.removeEventListener('abort', onAbort)
        socket.setTimeout(0)
        socket.end()
      }
    }

    const onHeaders = (): void => {
      const end = header.indexOf(HEADER_END)
      if (end < 0) {
        if (header.length > MAX_HEADER_BYTES)
          fail(new PeerUnavailableError(`peer ${peer.id} sent oversized headers`))
        return
      }
      clearTimeout(timer)
      const lines = header.subarray(0, end).toString('latin1').split('\r\n')
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1])
      const headers: Record<string, string> = {}
      for (const line of lines.slice(1)) {
        const i = line.indexOf(':')
        if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim()
      }
      const rest = header.subarray(end + HEADER_END.length)
      header = Buffer.alloc(0)
      if (status !== 200 && status !== 206) {
        fail(
          new PeerUnavailableError(
            `peer ${peer.id} (${peer.url}) answered ${Number.isNaN(status) ? 'garbage' : status}`,
          ),
        )
        return
      }
      const length = init.method === 'HEAD' ? 0 : Number(headers['content-length'])
      if (!Number.isSafeInteger(length) || length < 0) {
        fail(new PeerUnavailableError(`peer ${peer.id} sent no Content-Length`))
        return
      }
      remaining = length
      body = new Readable({
        // With a pool, one chunk per read, never merged: a byte-mode stream's async iterator concatenates
        // whatever is buffered (a copy, and the pool buffers are lost to the GC), so count chunks instead.
        ...(pool === undefined
          ? { highWaterMark: init.readBufferBytes ?? BLOB_BUFFER_BYTES }
          : { objectMode: true, highWaterMark: POOLED_READ_AHEAD_CHUNKS }),
        read: () => socket.resume(),
        destroy: (err, cb) => {
          if (remaining > 0) socket.destroy()
          signal?.removeEventListener('abort', onAbort)
          cb(err)
        },
      })
      settled = true
      socket.setTimeout(init.bodyIdleTimeoutMs)
      resolve({ peer, status, headers, body, latencyMs: performance.now() - started })
      if (length === 0) {
        body.push(null)
        socket.end()
      } else if (rest.length > 0) {
        onBody(rest)
      }
    }

    const socket: Socket = connect({
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: Number(url.port === '' ? 80 : url.port),
      noDelay: true,
      onread: {
        // with a pool: a fresh pool buffer per read, handed on as is; else one buffer, reused, so copied
        buffer:
          pool === undefined
            ? Buffer.allocUnsafe(init.readBufferBytes ?? BLOB_BUFFER_BYTES)
            : () => (spare = pool.take()),
        callback: (n: number, buf: Uint8Array): boolean => {
          spare = undefined
          const view = Buffer.from(buf.buffer, buf.byteOffset, n)
          const chunk = pool === undefined ? Buffer.from(view) : view
          if (body === undefined) {
            header = header.length === 0 ? chunk : Buffer.concat([header, chunk])
            onHeaders()
          } else {
            onBody(chunk)
          }
          return true
        },
      },
    })
    socket.on('timeout', () =>
      fail(
        new PeerUnavailableError(`peer ${peer.id} body made no progress for ${init.bodyIdleTimeoutMs} ms`),
      ),
    )
    socket.on('error', (err) =>
      fail(new PeerUnavailableError(`peer ${peer.id} (${peer.url}): ${err.message}`)),
    )
    socket.on('close', () => {
      if (spare !== undefined) pool?.giveBack(spare)
      spare = undefined
      if (!settled) fail(new PeerUnavailableError(`peer ${peer.id} closed the connection before answering`))
      else if (remaining > 0)
        fail(
          new PeerUnavailableError(
            `peer ${peer.id} closed the connection mid-body (${remaining} bytes short)`,
          ),
        )
    })
    const extra = Object.entries(init.headers ?? {})
      .map(([k, v]) => `${k}: ${v.replace(/[\r\n]/g, '')}\r\n`)
      .join('')
    socket.write(
      `${init.method} ${init.path} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\n${extra}\r\n`,
    )
  })
}
