/**
 * `/kagami/keys/1.0.0`: every node sends each connected kagami peer the full list of keys it advertises,
 * when they connect and again (debounced) after each change. Each node so holds an index of what its
 * connected peers have: a lookup for content on a connected peer is answered locally in microseconds, and
 * advertising 10,000 keys costs one message per peer instead of 10,000 DHT provides (~15/s on this
 * machine). The DHT still serves peers beyond direct connections.
 *
 * One message per short-lived stream: 4-byte big-endian length + JSON `{ seq, keys }`. `seq` grows with
 * every list a node sends, so a late, older list never replaces a newer one. The receiver closes the stream
 * once it has applied the list, which is the sender's acknowledgement.
 *
 * A lookup may answer a miss from these lists alone (see `KadDhtRouter.resolve`), so "connected" must mean
 * "its current list is here": a list that fails to arrive is retried, and when it still fails the sender
 * hangs up, so the receiver forgets that peer's list instead of trusting a stale one.
 */
import type { Libp2p, PeerId, Stream } from '@libp2p/interface'
import type { Logger } from 'pino'

export const KEYS_PROTOCOL = '/kagami/keys/1.0.0'
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024
/** Attempts to deliver the current list to one peer before hanging up on it. */
const SEND_ATTEMPTS = 3
const RETRY_DELAY_MS = 250

interface KeyList {
  seq: number
  keys: string[]
}

export interface KeyExchangeInit {
  /** Coalesce changes for this long before sending the new list (default 100 ms). */
  debounceMs?: number
  sendTimeoutMs?: number
}

export class KeyExchange {
  /** key → ids of connected peers that hold it */
  private readonly index = new Map<string, Set<string>>()
  /** peer id → the list it sent last */
  private readonly byPeer = new Map<string, { seq: number; keys: Set<string> }>()
  private seq = Date.now()
  private timer: NodeJS.Timeout | undefined
  /** peer id → a list is owed to that peer (one sender loop per peer coalesces changes) */
  private readonly outbox = new Map<string, { peer: PeerId; dirty: boolean }>()
  private cached: { version: number; message: Uint8Array } | undefined
  private version = 0
  private stopped = false
  private readonly debounceMs: number
  private readonly sendTimeoutMs: number

  constructor(
    private readonly node: Libp2p,
    private readonly localKeys: () => Iterable<string>,
    private readonly log: Logger,
    init: KeyExchangeInit = {},
  ) {
    this.debounceMs = init.debounceMs ?? 100
    this.sendTimeoutMs = init.sendTimeoutMs ?? 5000
  }

  async start(): Promise<void> {
    await this.node.handle(
      KEYS_PROTOCOL,
      (stream, connection) => void this.receive(stream, connection.remotePeer),
      {
        maxInboundStreams: 8,
      },
    )
    this.node.addEventListener('peer:identify', (e) => {
      if (e.detail.protocols.includes(KEYS_PROTOCOL)) this.schedule(e.detail.peerId)
    })
    this.node.addEventListener('peer:disconnect', (e) => this.forget(e.detail.toString()))
  }

  stop(): void {
    this.stopped = true
    clearTimeout(this.timer)
  }

  /** Connected peers whose key list we hold. */
  peerCount(): number {
    return this.byPeer.size
  }

  /** How many keys `peer` announced (0 when it sent no list). */
  keyCount(peer: string): number {
    return this.byPeer.get(peer)?.keys.size ?? 0
  }

  /** Every key some connected peer announced (the status page searches tags in it). */
  keys(): IterableIterator<string> {
    return this.index.keys()
  }

  /** Connected peers that announced `key`. */
  holders(key: string): string[] {
    return [...(this.index.get(key) ?? [])]
  }

  /** Our key list changed: send it to every connected peer soon (changes come in bursts). */
  changed(): void {
    this.version++
    if (this.timer !== undefined) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      for (const peer of this.peersWithProtocol()) this.schedule(peer)
    }, this.debounceMs)
    this.timer.unref()
  }

  private peersWithProtocol(): PeerId[] {
    const out = new Map<string, PeerId>()
    for (const c of this.node.getConnections()) out.set(c.remotePeer.toString(), c.remotePeer)
    return [...out.values()].filter(
      (p) => this.byPeer.has(p.toString()) || this.node.getConnections(p).length > 0,
    )
  }

  /** Owes `peer` our current list; one loop per peer sends it, so a burst of changes costs one message. */
  private schedule(peer: PeerId): void {
    const id = peer.toString()
    const owed = this.outbox.get(id)
    if (owed !== undefined) {
      owed.dirty = true
      return
    }
    this.outbox.set(id, { peer, dirty: true })
    void this.deliver(id)
  }

  private async deliver(id: string): Promise<void> {
    const owed = this.outbox.get(id)
    if (owed === undefined) return
    let failures = 0
    try {
      while (owed.dirty && !this.stopped && this.node.getConnections(owed.peer).length > 0) {
        owed.dirty = false
        try {
          await this.sendTo(owed.peer, this.message())
          failures = 0
        } catch (err) {
          owed.dirty = true
          if (++failures < SEND_ATTEMPTS) {
            this.log.debug({ peer: id, err: (err as Error).message }, 'could not send the key list; retrying')
            await new Promise((resolve) => setTimeout(resolve, RETRY_DELAY_MS * failures).unref())
            continue
          }
          // It would answer misses from a stale list of ours: disconnect, so it forgets the list and asks the
          // DHT; the next connection starts with a fresh list.
          this.log.warn(
            { peer: id, err: (err as Error).message },
            'could not send the key list; disconnecting',
          )
          await this.node.hangUp(owed.peer).catch(() => undefined)
          return
        }
      }
    } finally {
      this.outbox.delete(id)
    }
  }

  /** Our current list, encoded once per change and shared by every peer's send. */
  private message(): Uint8Array {
    if (this.cached?.version === this.version) return this.cached.message
    const body = Buffer.from(
      JSON.stringify({ seq: ++this.seq, keys: [...this.localKeys()] } satisfies KeyList),
    )
    const out = Buffer.allocUnsafe(4 + body.length)
    out.writeUInt32BE(body.length, 0)
    body.copy(out, 4)
    this.cached = { version: this.version, message: out }
    return out
  }

  /** Sends one list and waits for the receiver to close the stream, its acknowledgement. Throws on failure. */
  private async sendTo(peer: PeerId, message: Uint8Array): Promise<void> {
    const signal = AbortSignal.timeout(this.sendTimeoutMs)
    const protocols = (await this.node.peerStore.get(peer).catch(() => undefined))?.protocols ?? []
    if (!protocols.includes(KEYS_PROTOCOL)) return
    const stream = await this.node.dialProtocol(peer, KEYS_PROTOCOL, { signal })
    try {
      if (!stream.send(message)) await stream.onDrain({ signal })
      await stream.close({ signal })
      await closed(stream, signal)
    } catch (err) {
      stream.abort(err as Error)
      throw err
    }
  }

  private async receive(stream: Stream, peer: PeerId): Promise<void> {
    const id = peer.toString()
    const chunks: Uint8Array[] = []
    let size = 0
    try {
      for await (const chunk of stream) {
        const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray()
        size += bytes.length
        if (size > MAX_MESSAGE_BYTES) throw new Error(`key list over ${MAX_MESSAGE_BYTES} bytes`)
        chunks.push(bytes)
      }
      const buf = Buffer.concat(chunks)
      const length = buf.readUInt32BE(0)
      if (buf.length !== 4 + length) throw new Error('truncated key list')
      const list = JSON.parse(buf.subarray(4).toString('utf8')) as KeyList
      if (
        typeof list.seq !== 'number' ||
        !Array.isArray(list.keys) ||
        list.keys.some((k) => typeof k !== 'string')
      ) {
        throw new Error('malformed key list')
      }
      this.apply(id, list)
      await stream.close() // acknowledges the list; also frees the inbound stream slot
    } catch (err) {
      // whatever we held from this peer may be stale now: lookups must not trust it
      this.forget(id)
      this.log.debug({ peer: id, err: (err as Error).message }, 'bad key list')
      stream.abort(err as Error)
    }
  }

  private apply(id: string, list: KeyList): void {
    const current = this.byPeer.get(id)
    if (current !== undefined && current.seq >= list.seq) return // an older list arrived late
    this.forget(id)
    const keys = new Set(list.keys)
    this.byPeer.set(id, { seq: list.seq, keys })
    for (const key of keys) {
      const holders = this.index.get(key) ?? new Set<string>()
      holders.add(id)
      this.index.set(key, holders)
    }
  }

  private forget(id: string): void {
    for (const key of this.byPeer.get(id)?.keys ?? []) {
      const holders = this.index.get(key)
      holders?.delete(id)
      if (holders?.size === 0) this.index.delete(key)
    }
    this.byPeer.delete(id)
  }
}

/** Resolves once both ends have closed the stream; rejects on reset, abort or `signal`. */
async function closed(stream: Stream, signal: AbortSignal): Promise<void> {
  if (stream.status === 'closed') return
  if (stream.status !== 'open' && stream.status !== 'closing') throw new Error(`stream ${stream.status}`)
  await new Promise<void>((resolve, reject) => {
    const cleanup = (): void => {
      stream.removeEventListener('close', onClose)
      signal.removeEventListener('abort', onAbort)
    }
    const onClose = (e: Event): void => {
      cleanup()
      const error = (e as Event & { error?: Error }).error
      if (error !== undefined) reject(error)
      else resolve()
    }
    const onAbort = (): void => {
      cleanup()
      reject(signal.reason as Error)
    }
    stream.addEventListener('close', onClose)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
