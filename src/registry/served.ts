import type { Readable } from 'node:stream'
import type { Source } from './metrics.js'

/** What a handler answers with: status, headers, and a body (buffer for manifests, stream for blobs). */
export interface Served {
  source: Exclude<Source, 'miss'>
  status: 200 | 206
  headers: Record<string, string>
  body?: Buffer | Readable
  digest: string
  peer?: string
  /** Served from a download still in progress (the peer endpoint's in-flight serving). */
  inFlight?: boolean
}

/**
 * Marks a response served from a download still arriving: it can come no faster than that download's own
 * source (upstream, for the herd's elected node), so the fetching side holds it to a lower floor (resume.ts).
 */
export const IN_FLIGHT_HEADER = 'x-kagami-in-flight'

/**
 * What each stream stage on the blob path holds before it pushes back (peer body, resume, verify, the
 * mirror's output), and the pool buffer size: 1 MiB. Node's 16–64 KiB defaults made the relay ~3× slower
 * (bench/mirror.ts); 4 MiB per stage made 16 parallel relays hold several hundred MiB (bench/memory.ts).
 */
export const BLOB_BUFFER_BYTES = 1024 * 1024

/**
 * The HTTP servers' socket write buffer: with Node's 16 KiB default, serving a file ran at ~0.3 GiB/s here,
 * with 4 MiB as fast as docker-registry (bench/mirror.ts).
 */
export const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
