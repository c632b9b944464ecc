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
}
