import { createHash } from 'node:crypto'
import { request } from 'node:http'
import type { Logger } from 'pino'
import type { Digest } from '../oci/index.js'
import type { Peer } from '../routing/router.js'
import type { Store } from '../store/store.js'

/** Path on the peer endpoint where a node says "the bytes you sent me for this digest failed it". */
export const CORRUPT_REPORT_PATH = '/kagami/v1/corrupt/'

/**
 * Tells `peer` that its copy of `digest` failed verification. Fire and forget: the peer does not take our
 * word for it, it re-hashes its own copy (`CorruptReports`). Never throws.
 */
export async function reportCorrupt(
  peer: Peer,
  digest: Digest,
  options: { signal: AbortSignal; headers?: Record<string, string> },
): Promise<void> {
  await new Promise<void>((resolve) => {
    const req = request(`${peer.url}${CORRUPT_REPORT_PATH}${digest}`, {
      method: 'POST',
      signal: options.signal,
      headers: { ...options.headers, 'content-length': '0' },
    })
    req.on('response', (res) => {
      res.resume()
      res.on('end', resolve)
      res.on('error', () => resolve())
    })
    req.on('error', () => resolve())
    req.end()
  })
}

export interface CorruptReportsComponents {
  store: Store
  logger: Logger
  /** Called when our own copy of `digest` really fails its digest (stop advertising and serving it). */
  onCorrupt(digest: Digest): void
}

/**
 * Receives reports that our copy of a digest is corrupt. A report is only a hint (anyone reaching the port can
 * send one): we re-hash our own copy, one check at a time and each digest at most once per `recheckMs`, and
 * only a real mismatch takes the digest out of service.
 */
export class CorruptReports {
  private readonly checkedAt = new Map<string, number>()
  private busy = false
  private readonly log: Logger

  constructor(
    private readonly components: CorruptReportsComponents,
    private readonly init: { recheckMs?: number } = {},
  ) {
    this.log = components.logger.child({ component: 'integrity' })
  }

  /** Starts a check of `digest` unless one ran recently or another is running; returns whether it started. */
  report(digest: Digest, options: { signal?: AbortSignal } = {}): boolean {
    const recheckMs = this.init.recheckMs ?? 10 * 60_000
    const last = this.checkedAt.get(digest)
    if (this.busy || (last !== undefined && Date.now() - last < recheckMs)) return false
    this.busy = true
    this.checkedAt.set(digest, Date.now())
    if (this.checkedAt.size > 10_000) this.checkedAt.delete(this.checkedAt.keys().next().value as string)
    void this.check(digest, options.signal).finally(() => (this.busy = false))
    return true
  }

  private async check(digest: Digest, signal?: AbortSignal): Promise<void> {
    try {
      const hash = createHash('sha256')
      for await (const chunk of await this.components.store.read(digest, { signal }))
        hash.update(chunk as Buffer)
      const got = `sha256:${hash.digest('hex')}`
      if (got === digest) {
        this.log.info({ digest }, 'a peer reported our copy as corrupt; it verifies')
        return
      }
      this.log.error(
        { digest, got },
        'our copy of this content is corrupt (it fails its digest): no longer advertised or served; delete the image and pull it again',
      )
      this.components.onCorrupt(digest)
    } catch (err) {
      if ((err as Error).name !== 'NotFoundError')
        this.log.warn({ digest, err: (err as Error).message }, 'could not check reported content')
    }
  }
}
