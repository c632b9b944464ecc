/**
 * Peers that failed a digest, remembered per digest for a while so that lookups skip them: a corrupt copy
 * on one node must not fail every pull while a good copy exists elsewhere, and a peer too slow to serve it
 * must not be asked again by containerd's next attempt. Bounded: the oldest entry goes first.
 */
export class SuspectPeers {
  /** `digest peer` → when the mark expires */
  private readonly until = new Map<string, number>()

  constructor(private readonly init: { ttlMs: number; maxEntries: number }) {}

  /** Skips `peer` for `digest` for `ttlMs` (default: the init TTL). */
  add(digest: string, peer: string, ttlMs = this.init.ttlMs): void {
    const key = `${digest} ${peer}`
    this.until.delete(key)
    if (this.until.size >= this.init.maxEntries) {
      const oldest = this.until.keys().next().value
      if (oldest !== undefined) this.until.delete(oldest)
    }
    this.until.set(key, Date.now() + ttlMs)
  }

  has(digest: string, peer: string): boolean {
    const key = `${digest} ${peer}`
    const until = this.until.get(key)
    if (until === undefined) return false
    if (until > Date.now()) return true
    this.until.delete(key)
    return false
  }
}
