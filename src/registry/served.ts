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
 * Buffer size on the blob path (socket writes, stream stages, peer reads). With Node's 16–64 KiB defaults a
 * blob relayed through the mirror ran ~3× slower on this machine (bench/mirror.ts).
 */
export const BLOB_BUFFER_BYTES = 4 * 1024 * 1024
