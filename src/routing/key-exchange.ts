/**
 * `/kagami/keys/3.0.0`: each node subscribes to the key lists of a bounded set of kagami peers and holds
 * them in memory, so a lookup for content on one of those peers is answered locally in microseconds and,
 * while the set covers the whole cluster, a miss is known at once without a DHT query.
 *
 * Why subscriptions and deltas (v1 sent every connected peer the full list on every change): with N nodes
 * and K keys each, full lists cost every node N × K held strings and N × K × 70 bytes per image pull
 * cluster-wide; see bench/scale.ts and bench/results/scale.md. Here:
 * - the subscriber opens one long-lived stream per peer; the publisher writes a snapshot (its keys and its
 *   own subscriptions, the "members"), an END frame, then only deltas (added/removed keys, members that
 *   joined/left) as they happen. Nothing is re-sent while nothing changes.
 * - a node subscribes to every peer in clusters of up to `maxPeers` + 1 nodes (a full view); above that to a
 *   sample of `samplePeers`, the XOR-closest half and a random half, and it serves at most `maxSubscribers`.
 * - a peer's list is held as a sorted Float64Array of 48-bit key hashes (8 bytes a key, not ~150), and it is
 *   sent as those hashes (6 bytes a key; 2.0.0 sent the 72-byte key strings, which the subscriber only hashed):
 *   a node joining a 200-node full view received 200 × 3,000 × 72 B = 43 MB, and the cluster's settling was
 *   bound by the CPU that noise, the PSK and parsing spent on those bytes (bench/results/scale.md).
 * - members spread through the snapshots, so every node learns of every other and the full view heals by
 *   itself; `complete()` says when every node we know of, and every node they know of, has given us its
 *   list, which is when `KadDhtRouter.resolve` may answer a miss from memory.
 *
 * Frames: u32 big-endian length of (type + payload), u8 type, payload. Keys are 6-byte big-endian hashes
 * (`keyHash`), packed; members are UTF-8 lines `<peer id> <multiaddr>…`. Every input is bounded: frame size, keys and members per peer, key syntax,
 * a deadline for the snapshot and for every frame once its first byte arrived (a trickling peer), and a
 * per-peer byte and frame rate. A peer that breaks one is logged, disconnected and not served or
 * subscribed to for `banMs`. A subscriber must never write: one byte from it is such a violation.
 *
 * A list that failed to arrive never counts as known: only a subscription whose END frame arrived on a
 * stream that is still open is used, and it is forgotten the moment its stream or connection closes.
 */
import { createHash } from 'node:crypto'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'

export const KEYS_PROTOCOL = '/kagami/keys/3.0.0'

/** Lists a node holds in a cluster larger than its full view (see `KeyExchange.sample`). */
export const DEFAULT_SAMPLE_PEERS = 64

export const FRAME = { keys: 1, end: 2, add: 3, del: 4, join: 5, leave: 6, view: 7 } as const
const MAX_ADDRS_PER_MEMBER = 4
/** bytes of one key hash on the wire */
export const HASH_BYTES = 6

export interface KeyExchangeInit {
  /** Coalesce local changes for this long before sending a delta (default 100 ms). */
  debounceMs?: number
  /** A subscriber that does not read for this long is dropped (default 10 s). */
  sendTimeoutMs?: number
  /** Peers whose lists we hold (default 256: a full view of clusters up to 257 nodes). */
  maxPeers?: number
  /** Peers whose lists we hold in a larger cluster (default 64; see `sample`). */
  samplePeers?: number
  /** Peers we send our list to (default 320). */
  maxSubscribers?: number
  /** Keys one peer may announce (default 50,000: ~3.7 MB on the wire, 400 KB held). */
  maxKeysPerPeer?: number
  /** Members one peer may announce (default 1,024). */
  maxMembersPerPeer?: number
  /** Largest frame (default 256 KiB); a snapshot is sent in 64 KiB frames. */
  maxFrameBytes?: number
  /** A frame must arrive whole within this long after its first byte (default 5 s). */
  frameTimeoutMs?: number
  /** The snapshot must arrive whole within this long after subscribing (default 30 s). */
  snapshotTimeoutMs?: number
  /** A subscription's dial and protocol negotiation must end within this long (default 10 s, at most the snapshot's). */
  dialTimeoutMs?: number
  /** Per-peer token bucket: sustained bytes/s and burst (defaults 1 MiB/s, 8 MiB). */
  bytesPerSecond?: number
  burstBytes?: number
  /** Per-peer token bucket on frames (defaults 200/s, burst 2,000). */
  framesPerSecond?: number
  burstFrames?: number
  /** How long a peer that broke a limit is neither served nor subscribed to (default 60 s). */
  banMs?: number
  /** How often the subscription set is reconsidered (default 2 s; also after every membership event). */
  selectIntervalMs?: number
  /**
   * How often a publisher tells its subscribers how many keys and members it announced (default 30 s). A
   * subscriber whose copy differs, or that heard nothing for 3 intervals, subscribes again: whatever went
   * wrong with a delta, a list is never wrong for longer than that.
   */
  heartbeatMs?: number
  /**
   * Of two nodes that learn of each other and are not connected, the one with the higher peer id dials; the
   * other waits this long for that connection before it dials itself (default 10 s). See `select`.
   */
  dialWaitMs?: number
}

export interface KeyExchangeStats {
  /** Peers whose complete list we hold. */
  peers: number
  subscribers: number
  /** Keys held from all peers. */
  heldKeys: number
  /** Estimated bytes of routing state held by the exchange. */
  stateBytes: number
  bytesSent: number
  bytesReceived: number
  /** Every node we know of gave us its list and sees the same members. */
  complete: boolean
  incomplete?: string
  violations: number
  /** subscriptions restarted because a heartbeat showed our copy out of step */
  resyncs: number
  /** subscriptions held, lists still arriving included, and how many are dialling */
  subscriptions: number
  dialing: number
  /** nodes known (us included), and peers whose last subscription failed (backing off) */
  knownNodes: number
  failedPeers: number
}

class Violation extends Error {
  override name = 'KeyExchangeViolation'
}

/** 48 bits of the key: digests are uniform already; tags are hashed. Exact as a double. */
export function keyHash(key: string): number {
  if (key.startsWith('sha256:')) return parseInt(key.slice(7, 19), 16)
  return createHash('sha256').update(key).digest().readUIntBE(0, 6)
}

/** FNV-1a, for the membership fingerprint (XOR of members' hashes). */
function hash32(s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
  return h >>> 0
}

function contains(sorted: Float64Array, h: number): boolean {
  let lo = 0
  let hi = sorted.length - 1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    const v = sorted[mid]!
    if (v === h) return true
    if (v < h) lo = mid + 1
    else hi = mid - 1
  }
  return false
}

function sortedUnique(values: number[]): Float64Array {
  const a = Float64Array.from(values).sort()
  let n = 0
  for (let i = 0; i < a.length; i++) if (i === 0 || a[i] !== a[n - 1]) a[n++] = a[i]!
  return a.slice(0, n)
}

class TokenBucket {
  private tokens: number
  private at = Date.now()
  constructor(
    private readonly rate: number,
    private readonly burst: number,
  ) {
    this.tokens = burst
  }
  take(n: number): boolean {
    const now = Date.now()
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.rate)
    this.at = now
    this.tokens -= n
    return this.tokens >= 0
  }
}

export function encodeFrame(type: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = Buffer.allocUnsafe(5 + payload.length)
  out.writeUInt32BE(1 + payload.length, 0)
  out[4] = type
  out.set(payload, 5)
  return out
}

/** Lines packed into frames of at most `maxPayload` bytes each. */
function lineFrames(type: number, lines: Iterable<string>, maxPayload = 64 * 1024): Uint8Array[] {
  const out: Uint8Array[] = []
  let batch: string[] = []
  let size = 0
  for (const line of lines) {
    const n = Buffer.byteLength(line) + 1
    if (size + n > maxPayload && batch.length > 0) {
      out.push(encodeFrame(type, Buffer.from(batch.join('\n'))))
      batch = []
      size = 0
    }
    batch.push(line)
    size += n
  }
  if (batch.length > 0) out.push(encodeFrame(type, Buffer.from(batch.join('\n'))))
  return out
}

/** Key hashes packed 6 bytes each into frames of at most `maxPayload` bytes. */
export function hashFrames(type: number, hashes: Iterable<number>, maxPayload = 64 * 1024): Uint8Array[] {
  const per = Math.floor(maxPayload / HASH_BYTES)
  const out: Uint8Array[] = []
  let batch = Buffer.allocUnsafe(per * HASH_BYTES)
  let n = 0
  for (const h of hashes) {
    batch.writeUIntBE(h, n * HASH_BYTES, HASH_BYTES)
    if (++n === per) {
      out.push(encodeFrame(type, batch))
      batch = Buffer.allocUnsafe(per * HASH_BYTES)
      n = 0
    }
  }
  if (n > 0) out.push(encodeFrame(type, batch.subarray(0, n * HASH_BYTES)))
  return out
}

function readHashes(payload: Uint8Array): number[] {
  if (payload.length % HASH_BYTES !== 0)
    throw new Violation(
      `a malformed key frame (${payload.length} bytes, not whole ${HASH_BYTES}-byte hashes)`,
    )
  const b = Buffer.from(payload.buffer, payload.byteOffset, payload.length)
  const out = new Array<number>(payload.length / HASH_BYTES)
  for (let i = 0; i < out.length; i++) out[i] = b.readUIntBE(i * HASH_BYTES, HASH_BYTES)
  return out
}

interface Subscription {
  id: string
  peer: PeerId
  stream?: Stream
  complete: boolean
  hashes: Float64Array
  /** hashes of the snapshot while it arrives */
  pending: number[]
  /** member id → its addresses */
  members: Map<string, string[]>
  /** when the last whole frame arrived */
  lastFrameAt: number
  bytes: TokenBucket
  frames: TokenBucket
}

interface Subscriber {
  id: string
  stream: Stream
  queue: Promise<void>
}

export class KeyExchange {
  private readonly subs = new Map<string, Subscription>()
  private readonly subscribers = new Map<string, Subscriber>()
  /** connected peers that speak the protocol (from identify) */
  private readonly kagamiPeers = new Set<string>()
  /** connected peers whose identify finished (kagami or not): an unidentified one may be a kagami node */
  private readonly identified = new Set<string>()
  /** connected peers (any protocol) */
  private readonly connected = new Set<string>()
  /** connected kagami DHT nodes that do not speak this protocol */
  private readonly otherPeers = new Set<string>()
  /** their identify listen addresses, passed on to our subscribers with our members */
  private readonly listenAddrs = new Map<string, string[]>()
  /** peer id → when its subscription last failed and how often in a row (retried after 1, 2, 4 … 30 s) */
  private readonly failed = new Map<string, { at: number; count: number }>()
  private readonly banned = new Map<string, number>()
  private readonly memberLines = new Map<string, { id: string; addrs: string[] }>()
  /** what our subscribers were last sent: deltas are computed against it */
  /** key → its hash */
  private sent = new Map<string, number>()
  /** the snapshot's key frames, encoded once per change of our keys (every new subscriber gets the same) */
  private snapshotFrames: Uint8Array[] | undefined
  private sentMembers = new Map<string, string[]>()
  private timer: NodeJS.Timeout | undefined
  private selectTimer: NodeJS.Timeout | undefined
  private kickTimer: NodeJS.Timeout | undefined
  private stopped = false
  private saturated_ = false
  private dialing = 0
  private bytesSent = 0
  private bytesReceived = 0
  private violations = 0
  private resyncs = 0
  private readonly self: string
  private readonly selfHash: number
  private readonly cfg: Required<KeyExchangeInit>

  constructor(
    private readonly node: Libp2p,
    private readonly localKeys: () => Iterable<string>,
    private readonly log: Logger,
    init: KeyExchangeInit = {},
    /** Other peers known to be kagami nodes (the DHT routing table): candidates, and part of "complete". */
    private readonly knownPeers: () => Iterable<string> = () => [],
  ) {
    this.cfg = {
      debounceMs: init.debounceMs ?? 100,
      sendTimeoutMs: init.sendTimeoutMs ?? 10_000,
      maxPeers: init.maxPeers ?? 256,
      samplePeers: Math.min(init.samplePeers ?? DEFAULT_SAMPLE_PEERS, init.maxPeers ?? 256),
      maxSubscribers: init.maxSubscribers ?? 320,
      maxKeysPerPeer: init.maxKeysPerPeer ?? 50_000,
      maxMembersPerPeer: init.maxMembersPerPeer ?? 1024,
      maxFrameBytes: init.maxFrameBytes ?? 256 * 1024,
      frameTimeoutMs: init.frameTimeoutMs ?? 5_000,
      snapshotTimeoutMs: init.snapshotTimeoutMs ?? 30_000,
      dialTimeoutMs: Math.min(init.dialTimeoutMs ?? 10_000, init.snapshotTimeoutMs ?? 30_000),
      bytesPerSecond: init.bytesPerSecond ?? 1024 * 1024,
      burstBytes: init.burstBytes ?? 8 * 1024 * 1024,
      framesPerSecond: init.framesPerSecond ?? 200,
      burstFrames: init.burstFrames ?? 2_000,
      banMs: init.banMs ?? 60_000,
      selectIntervalMs: init.selectIntervalMs ?? 2_000,
      heartbeatMs: init.heartbeatMs ?? 30_000,
      dialWaitMs: init.dialWaitMs ?? 10_000,
    }
    this.self = node.peerId.toString()
    this.selfHash = hash32(this.self)
  }

  async start(): Promise<void> {
    await this.node.handle(KEYS_PROTOCOL, (stream, connection) => this.serve(stream, connection), {
      // one subscription per connection, plus one replacing it
      maxInboundStreams: 2,
      maxOutboundStreams: 2,
    })
    this.node.addEventListener('peer:identify', (e) => {
      const id = e.detail.peerId.toString()
      this.identified.add(id)
      if (!e.detail.protocols.includes(KEYS_PROTOCOL)) {
        // a node without this exchange (DHT only, or an older kagami) may hold keys no list tells us about
        if (e.detail.protocols.some((p) => p.startsWith('/kagami/kad/'))) this.otherPeers.add(id)
        return
      }
      this.otherPeers.delete(id)
      this.kagamiPeers.add(id)
      // a peer that is back (restarted, reconnected) is asked at once, not after the back-off its absence
      // earned: until its list is here, its content is unreachable
      this.failed.delete(id)
      this.membership++
      this.listenAddrs.set(
        id,
        e.detail.listenAddrs.slice(0, MAX_ADDRS_PER_MEMBER).map((a) => a.decapsulateCode(421).toString()),
      )
      this.kick()
    })
    this.node.addEventListener('peer:connect', (e) => {
      this.connected.add(e.detail.toString())
      this.heardOf.delete(e.detail.toString())
      this.membership++
    })
    this.node.addEventListener('peer:disconnect', (e) => {
      const id = e.detail.toString()
      this.connected.delete(id)
      // a peer we were connected to is dialled again at once, whatever its id: if it left, the failed
      // dial is what tells us (gone()), and a view waiting 10 s for a departed node is incomplete that long
      this.heardOfAt(id, -Infinity)
      this.membership++
      this.kagamiPeers.delete(id)
      this.identified.delete(id)
      this.otherPeers.delete(id)
      this.listenAddrs.delete(id)
      // a node that left is never returned once its connection closed
      const sub = this.subs.get(id)
      if (sub !== undefined) this.drop(sub)
      this.subscribers.get(id)?.stream.abort(new Error('disconnected'))
      this.subscribers.delete(id)
    })
    this.selectTimer = setInterval(() => this.select(), this.cfg.selectIntervalMs)
    this.selectTimer.unref()
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.cfg.heartbeatMs)
    this.heartbeatTimer.unref()
  }

  stop(): void {
    this.stopped = true
    clearTimeout(this.timer)
    clearTimeout(this.kickTimer)
    clearInterval(this.selectTimer)
    clearInterval(this.heartbeatTimer)
  }

  private heartbeatTimer: NodeJS.Timeout | undefined

  /** What our subscribers should hold of us: `<keys> <members>` (after the deltas queued before it). */
  private heartbeat(): void {
    if (this.stopped || this.subscribers.size === 0) return
    const frame = encodeFrame(FRAME.view, Buffer.from(`${this.sent.size} ${this.sentMembers.size}`))
    for (const s of this.subscribers.values()) this.enqueue(s, [frame])
  }

  /** Peers whose complete list we hold. */
  peerCount(): number {
    let n = 0
    for (const s of this.subs.values()) if (s.complete) n++
    return n
  }

  /** How many keys `peer` announced (0 when we hold no list from it). */
  keyCount(peer: string): number {
    return this.subs.get(peer)?.hashes.length ?? 0
  }

  /** Peers whose complete list announces `key`. */
  holders(key: string): string[] {
    const h = keyHash(key)
    const out: string[] = []
    for (const s of this.subs.values()) if (s.complete && contains(s.hashes, h)) out.push(s.id)
    return out
  }

  /** Connected to a kagami DHT node that does not exchange lists: it finds our keys only on the DHT. */
  hasOtherPeers(): boolean {
    return this.otherPeers.size > 0
  }

  /**
   * Nodes we know of, us included (connected, in the DHT table, or listed as a member by a peer): the
   * cluster's size while that is below ~maxPeers², which a sampled view's members cover.
   */
  knownNodes(): number {
    return this.known
  }

  private known = 1

  /** The peer set's size (a full view up to maxPeers + 1 nodes). */
  maxPeers(): number {
    return this.cfg.maxPeers
  }

  /** More kagami peers are known than `maxPeers`: we hold a sample of the cluster, not all of it. */
  saturated(): boolean {
    return this.saturated_
  }

  /** Sampled, and the complete lists of a full sample are in (which keys are popular shows only then). */
  sampleComplete(): boolean {
    return this.saturated_ && this.peerCount() >= this.cfg.samplePeers
  }

  /**
   * True when a miss may be answered from memory: we are below `maxPeers` and hold the complete list of every
   * kagami peer we are connected to or have heard of, including every member those peers announce (the set
   * of nodes we know is closed: nobody we know knows a node we do not).
   *
   * Why closure and not agreement (until this, every peer had to announce exactly our members): with 200
   * nodes and one joining or leaving every few seconds, some peer was always a delta behind, so no node was
   * complete for long, misses went to the DHT, and after a minute of that every node started providing its
   * keys at once. A peer that knows fewer nodes than we do takes nothing from what we know.
   */
  complete(): boolean {
    return this.incompleteReason() === undefined
  }

  /** Why `complete()` is false (for stats and debugging), or undefined when it is true. */
  incompleteReason(): string | undefined {
    if (this.saturated_) return 'saturated'
    for (const id of this.otherPeers) return `connected to ${id}, a DHT node without the key exchange`
    for (const s of this.subs.values()) if (!s.complete) return `list of ${s.id} still arriving`
    for (const id of this.kagamiPeers) {
      if (!this.subs.has(id) && !this.isBanned(id)) return `connected to ${id} without its list`
    }
    for (const id of this.connected) {
      if (!this.identified.has(id) && this.subs.get(id)?.complete !== true && !this.isBanned(id))
        return `connected to ${id}, not identified yet`
    }
    for (const id of this.knownPeers()) {
      if (id !== this.self && this.subs.get(id)?.complete !== true && !this.isBanned(id) && !this.gone(id))
        return `${id} in the routing table without its list`
    }
    // V × V members: computed again only when a list or a member changed (or after a second: bans expire)
    const now = Date.now()
    if (this.closure === undefined || this.closure.at !== this.membership || now - this.closure.time > 1000) {
      this.closure = { at: this.membership, time: now, reason: this.closureReason() }
    }
    return this.closure.reason
  }

  /** Bumped when a list completes or is dropped and when a member joins or leaves a list. */
  private membership = 0
  private closure: { at: number; time: number; reason: string | undefined } | undefined

  /**
   * A node we are not connected to and could not subscribe to: it left (the DHT routing table keeps a
   * departed node until a ping evicts it, and a peer lists it until its own connection closes). Without
   * this, one departure left every node incomplete, and every miss went to the DHT, until the table
   * forgot it. A node we cannot reach cannot serve us either; it counts again once it connects.
   */
  private gone(id: string): boolean {
    return this.failed.has(id) && !this.connected.has(id)
  }

  private closureReason(): string | undefined {
    for (const [m, r] of this.memberRefs) {
      if (m !== this.self && this.subs.get(m)?.complete !== true && !this.isBanned(m) && !this.gone(m))
        return `${r.by} knows ${m}, whose list we do not hold`
    }
    return undefined
  }

  /**
   * Member id → how many of our subscriptions list it, its addresses, and one that does. Kept as members
   * join and leave, so `select` and the closure look at each known node once: they scanned every member of
   * every subscription (V × V, 40,000 entries at 200 nodes) on every pass, and a pass ran after every join
   * frame: ~20 % of a 200-node settle's CPU.
   */
  private readonly memberRefs = new Map<string, { count: number; addrs: string[]; by: string }>()

  /** Adds a member to a live subscription; true when no other subscription listed it (a new node). */
  private addMember(sub: Subscription, id: string, addrs: string[]): boolean {
    if (this.subs.get(sub.id) !== sub) return false
    const had = sub.members.has(id)
    sub.members.set(id, addrs)
    const ref = this.memberRefs.get(id)
    if (ref === undefined) {
      this.memberRefs.set(id, { count: 1, addrs, by: sub.id })
      return true
    }
    ref.addrs = addrs
    if (!had) ref.count++
    return false
  }

  private removeMember(sub: Subscription, id: string): void {
    if (this.subs.get(sub.id) !== sub || !sub.members.delete(id)) return
    const ref = this.memberRefs.get(id)
    if (ref !== undefined && --ref.count <= 0) this.memberRefs.delete(id)
  }

  stats(): KeyExchangeStats {
    let heldKeys = 0
    let stateBytes = this.sent.size * 120 + this.subscribers.size * 400 + this.memberLines.size * 300
    for (const s of this.subs.values()) {
      heldKeys += s.hashes.length
      stateBytes += 400 + s.hashes.byteLength + s.pending.length * 8 + s.members.size * 60
    }
    return {
      peers: this.peerCount(),
      subscribers: this.subscribers.size,
      heldKeys,
      stateBytes,
      bytesSent: this.bytesSent,
      bytesReceived: this.bytesReceived,
      complete: this.complete(),
      incomplete: this.incompleteReason(),
      violations: this.violations,
      resyncs: this.resyncs,
      subscriptions: this.subs.size,
      dialing: this.dialing,
      knownNodes: this.known,
      failedPeers: this.failed.size,
    }
  }

  /** Our key list changed: send the delta to every subscriber soon (changes come in bursts). */
  changed(): void {
    this.keysDirty = true
    this.schedule()
  }

  private keysDirty = false

  /** A delta (keys or members) is owed to our subscribers: send it after the debounce. */
  private schedule(): void {
    if (this.timer !== undefined || this.stopped) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.broadcast()
    }, this.cfg.debounceMs)
    this.timer.unref()
  }

  // ---- publishing ------------------------------------------------------------------------------------

  private currentMembers(): Map<string, string[]> {
    const out = new Map<string, string[]>()
    for (const s of this.subs.values()) if (s.complete) out.set(s.id, this.addrsOf(s.peer))
    return out
  }

  /** Where others can dial a member: its identify listen addresses, else the address we dialled. */
  private addrsOf(peer: PeerId): string[] {
    const id = peer.toString()
    const known = this.listenAddrs.get(id)
    if (known !== undefined && known.length > 0) return known
    const conn = this.node.getConnections(peer).find((c) => c.direction === 'outbound')
    return conn !== undefined ? [conn.remoteAddr.decapsulateCode(421).toString()] : []
  }

  private memberLine(id: string, addrs: string[]): string {
    return [id, ...addrs].join(' ')
  }

  private broadcast(): void {
    if (this.stopped) return
    const added: number[] = []
    const removed: number[] = []
    if (this.keysDirty) {
      // diffing K keys costs ~1 ms; only when our keys changed, not on every member change
      this.keysDirty = false
      const current = new Map<string, number>()
      for (const k of this.localKeys()) current.set(k, this.sent.get(k) ?? keyHash(k))
      for (const [k, h] of current) if (!this.sent.has(k)) added.push(h)
      for (const [k, h] of this.sent) if (!current.has(k)) removed.push(h)
      this.sent = current
      this.snapshotFrames = undefined
    }
    const members = this.currentMembers()
    const joined: string[] = []
    const left: string[] = []
    for (const [id, addrs] of members) if (!this.sentMembers.has(id)) joined.push(this.memberLine(id, addrs))
    for (const id of this.sentMembers.keys()) if (!members.has(id)) left.push(id)
    this.sentMembers = members
    const frames = [
      ...hashFrames(FRAME.del, removed),
      ...hashFrames(FRAME.add, added),
      ...lineFrames(FRAME.leave, left),
      ...lineFrames(FRAME.join, joined),
    ]
    if (frames.length === 0) return
    for (const s of this.subscribers.values()) this.enqueue(s, frames)
  }

  private serve(stream: Stream, connection: Connection): void {
    const id = connection.remotePeer.toString()
    if (this.stopped || this.isBanned(id)) {
      stream.abort(new Error('not served'))
      return
    }
    const previous = this.subscribers.get(id)
    if (previous === undefined && this.subscribers.size >= this.cfg.maxSubscribers) {
      void stream.close().catch(() => undefined) // full: the subscriber tries someone else
      return
    }
    previous?.stream.abort(new Error('replaced by a new subscription'))
    this.log.debug({ peer: id, replaced: previous !== undefined }, 'key subscriber added')
    const s: Subscriber = { id, stream, queue: Promise.resolve() }
    this.subscribers.set(id, s)
    void (async () => {
      try {
        for await (const _ of stream) {
          // a subscriber never writes; this also closes trickling or flooding streams at the first byte
          this.violation(connection.remotePeer, 'wrote to a key subscription')
          return
        }
      } catch {
        // stream reset or aborted
      } finally {
        if (this.subscribers.get(id) === s) this.subscribers.delete(id)
        stream.abort(new Error('subscription ended'))
      }
    })()
    // the snapshot is what the others were last sent; the next delta brings it up to date
    this.enqueue(s, [
      ...(this.snapshotFrames ??= hashFrames(FRAME.keys, this.sent.values())),
      ...lineFrames(
        FRAME.join,
        [...this.sentMembers].map(([m, a]) => this.memberLine(m, a)),
      ),
      encodeFrame(FRAME.end),
    ])
  }

  private enqueue(s: Subscriber, frames: Uint8Array[]): void {
    s.queue = s.queue
      .then(async () => {
        for (const f of frames) {
          if (this.subscribers.get(s.id) !== s) return
          this.bytesSent += f.length
          if (!s.stream.send(f))
            await s.stream.onDrain({ signal: AbortSignal.timeout(this.cfg.sendTimeoutMs) })
        }
      })
      .catch((err: Error) => {
        // a subscriber that does not read is dropped; it forgets our list and subscribes again later
        this.log.debug({ peer: s.id, err: err.message }, 'key subscriber dropped')
        if (this.subscribers.get(s.id) === s) this.subscribers.delete(s.id)
        s.stream.abort(err)
      })
  }

  // ---- subscribing -----------------------------------------------------------------------------------

  /** Reconsider subscriptions soon (several events in a burst cost one pass). */
  private kick(): void {
    if (this.kickTimer !== undefined || this.stopped) return
    this.kickTimer = setTimeout(() => {
      this.kickTimer = undefined
      this.select()
    }, 50)
    this.kickTimer.unref()
  }

  private isBanned(id: string): boolean {
    const until = this.banned.get(id)
    if (until === undefined) return false
    if (until > Date.now()) return true
    this.banned.delete(id)
    return false
  }

  private select(): void {
    if (this.stopped) return
    const now = Date.now()
    for (const sub of [...this.subs.values()]) {
      if (sub.complete && now - sub.lastFrameAt > 3 * this.cfg.heartbeatMs) {
        this.log.debug({ peer: sub.id }, 'key list publisher went silent; subscribing again')
        this.drop(sub)
      }
    }
    const candidates = new Map<string, string[]>()
    for (const id of this.kagamiPeers) candidates.set(id, [])
    for (const id of this.knownPeers()) candidates.set(id, [])
    // a connection whose identify never finished (it can fail under load): ask the peer itself
    for (const id of this.connected) {
      if (this.identified.has(id) || candidates.has(id)) continue
      const conn = this.node.getConnections(peerIdFromString(id))[0]
      if (conn !== undefined && now - conn.timeline.open > 5_000) candidates.set(id, [])
    }
    // every member our peers list (counted as they list them: not V × V members scanned per pass)
    for (const [m, r] of this.memberRefs) if (!candidates.has(m)) candidates.set(m, r.addrs)
    candidates.delete(this.self)
    this.known = candidates.size + 1
    for (const id of candidates.keys()) {
      const f = this.failed.get(id)
      const backoff = f === undefined ? 0 : Math.min(30_000, 1000 * 2 ** (f.count - 1))
      if (this.isBanned(id) || (f !== undefined && now - f.at < backoff)) candidates.delete(id)
    }
    // a sample turns back into a full view only 10 % below the peer set: a cluster of ~maxPeers nodes would
    // otherwise switch between every list and a sample at each join and leave
    const limit = this.saturated_ ? Math.floor(this.cfg.maxPeers * 0.9) : this.cfg.maxPeers
    this.saturated_ = candidates.size > limit
    let targets: string[]
    if (!this.saturated_) {
      targets = [...candidates.keys()]
    } else {
      targets = this.sample([...candidates.keys()])
      // a full view that became a sample lets go of the other lists: their memory is what sampling saves
      const keep = new Set(targets)
      for (const sub of [...this.subs.values()]) if (!keep.has(sub.id)) this.drop(sub)
    }
    for (const id of targets) {
      if (this.subs.has(id) || this.dialing >= 4) continue
      if (this.waitForDial(id, now)) continue
      void this.subscribe(id, candidates.get(id) ?? [])
    }
  }

  /**
   * The peers a node holds lists of in a cluster larger than its full view: the lists it holds (a list
   * is dropped only when the sample is over its size: every drop costs a snapshot again later), and free
   * places filled half with the XOR-closest (so members spread and every node is someone's closest) and half
   * at random, preferring peers that hold our list, so one connection serves both directions.
   *
   * Why `samplePeers` (64) and not the full view's 256: a sample answers only for what its peers hold. A
   * key that 8 of 64 random peers hold (12.5 % of the cluster) is in any other node's sample with
   * probability 1 − e⁻⁸; rarer content is provided on the DHT. With 256, keys on 3 % of the nodes would
   * count as popular too (fewer provides), at ~4× the memory: ~110 KiB per connection in libp2p and 8 B per
   * key held, 69 MiB a node modelled at 5,000 nodes against the 20 MiB goal (bench/results/scale.md).
   */
  private sample(candidates: string[]): string[] {
    const size = this.cfg.samplePeers
    const byDistance = (ids: string[]): string[] =>
      ids.sort((a, b) => ((hash32(a) ^ this.selfHash) >>> 0) - ((hash32(b) ^ this.selfHash) >>> 0))
    const shuffled = (ids: string[]): string[] => {
      for (let i = ids.length - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1))
        ;[ids[i], ids[j]] = [ids[j]!, ids[i]!]
      }
      return ids
    }
    const kept = candidates.filter((id) => this.subs.has(id))
    if (kept.length >= size) {
      // over the size (a full view that became a sample): the closest half and a random half of what we hold
      const near = byDistance(kept).slice(0, Math.ceil(size / 2))
      return [...near, ...shuffled(kept.slice(near.length)).slice(0, size - near.length)]
    }
    const rest = byDistance(candidates.filter((id) => !this.subs.has(id)))
    const free = size - kept.length
    const near = rest.slice(0, Math.ceil(free / 2))
    const others = shuffled(rest.slice(near.length))
    others.sort((a, b) => Number(!this.subscribers.has(a)) - Number(!this.subscribers.has(b))) // stable
    return [...kept, ...near, ...others.slice(0, free - near.length)]
  }

  /** peer id → when we first wanted to subscribe to it while not connected (see waitForDial) */
  private readonly heardOf = new Map<string, number>()

  /**
   * Whether to leave the dial to `id` for now. When a node joins, it learns of every member from its first
   * snapshot while every member learns of it from a delta, and both sides dialled at once: ~45 % of pairs
   * ended with two connections (1.45 per peer at 50 and 100 nodes, bench/results/scale.md), each one a
   * noise handshake, identify, yamux and DHT set-up (most of a join's CPU) and ~120 KiB held. So the node
   * with the higher id dials and the other waits for that connection, for up to `dialWaitMs` (the higher one
   * may not dial: it may be full, sampling others, or not know of us yet). Only a subscription's own dial
   * waits: a connected peer is subscribed to at once.
   */
  private waitForDial(id: string, now: number): boolean {
    if (this.connected.has(id) || id < this.self) return false
    const since = this.heardOf.get(id)
    if (since === undefined) {
      this.heardOfAt(id, now)
      return true
    }
    return now - since < this.cfg.dialWaitMs
  }

  /** Bounded: past 10,000 entries the map starts over (a forgotten peer only waits once more). */
  private heardOfAt(id: string, at: number): void {
    if (this.heardOf.size >= 10_000) this.heardOf.clear()
    this.heardOf.set(id, at)
  }

  private async subscribe(id: string, addrs: string[]): Promise<void> {
    let peer: PeerId
    try {
      peer = peerIdFromString(id)
    } catch {
      return
    }
    const sub: Subscription = {
      id,
      peer,
      complete: false,
      hashes: new Float64Array(0),
      pending: [],
      members: new Map(),
      lastFrameAt: Date.now(),
      bytes: new TokenBucket(this.cfg.bytesPerSecond, this.cfg.burstBytes),
      frames: new TokenBucket(this.cfg.framesPerSecond, this.cfg.burstFrames),
    }
    this.subs.set(id, sub)
    this.dialing++
    let received = 0
    const snapshotTimer = setTimeout(() => {
      if (received > 0) {
        this.violation(peer, `no complete key list within ${this.cfg.snapshotTimeoutMs} ms`, sub)
        return
      }
      // nothing at all: an overloaded or stuck publisher, not an attack; try again later
      this.log.debug(
        {
          peer: id,
          stream: sub.stream?.status,
          read: sub.stream?.readStatus,
          write: sub.stream?.writeStatus,
        },
        'no key list arrived; subscribing again later',
      )
      this.fail(id)
      this.drop(sub)
    }, this.cfg.snapshotTimeoutMs)
    let frameTimer: NodeJS.Timeout | undefined
    try {
      if (this.node.getConnections(peer).length === 0 && addrs.length > 0) {
        const multiaddrs: Multiaddr[] = []
        for (const a of addrs) {
          try {
            multiaddrs.push(multiaddr(a))
          } catch {
            // validated on receipt; skip anything odd
          }
        }
        await this.node.peerStore.merge(peer, { multiaddrs })
      }
      const signal = AbortSignal.timeout(this.cfg.dialTimeoutMs)
      const dialled = this.node.dialProtocol(peer, KEYS_PROTOCOL, { signal })
      // a stream that opens after our deadline is closed at once
      dialled.then(
        (late) => signal.aborted && late.abort(new Error('too late')),
        () => undefined,
      )
      // our own deadline too: a dial that ignored its signal would hold one of the few dial slots for ever
      const stream = await Promise.race([
        dialled,
        new Promise<never>((_, reject) =>
          signal.addEventListener('abort', () => reject(new Error('subscription dial timed out')), {
            once: true,
          }),
        ),
      ])
      this.dialing--
      sub.stream = stream
      this.log.debug({ peer: id }, 'key subscription open')
      if (this.subs.get(id) !== sub) throw new Error('dropped while dialling')
      let buffered: Buffer = Buffer.alloc(0)
      for await (const chunk of stream) {
        const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray()
        this.bytesReceived += bytes.length
        received += bytes.length
        if (!sub.bytes.take(bytes.length)) throw new Violation('over its byte rate')
        buffered = buffered.length === 0 ? Buffer.from(bytes) : Buffer.concat([buffered, bytes])
        let completed = false
        while (buffered.length >= 4) {
          const length = buffered.readUInt32BE(0)
          if (length < 1 || length > this.cfg.maxFrameBytes) throw new Violation(`a frame of ${length} bytes`)
          if (buffered.length < 4 + length) break
          if (!sub.frames.take(1)) throw new Violation('over its frame rate')
          sub.lastFrameAt = Date.now()
          this.apply(sub, buffered[4]!, buffered.subarray(5, 4 + length))
          if (sub.complete) clearTimeout(snapshotTimer)
          buffered = buffered.subarray(4 + length)
          completed = true
        }
        if (buffered.length === 0) {
          clearTimeout(frameTimer)
          frameTimer = undefined
        } else if (completed || frameTimer === undefined) {
          // a frame has started: it must arrive whole in time (a trickling peer holds nothing for long)
          clearTimeout(frameTimer)
          frameTimer = setTimeout(
            () => this.violation(peer, `a frame took over ${this.cfg.frameTimeoutMs} ms`, sub),
            this.cfg.frameTimeoutMs,
          )
        }
      }
    } catch (err) {
      if (err instanceof Violation) this.violation(peer, err.message, sub)
      // it does not speak the protocol: not a kagami node, so it cannot hold keys we miss
      if ((err as Error).name === 'UnsupportedProtocolError') this.identified.add(id)
      this.log.debug({ peer: id, err: (err as Error).message }, 'key subscription ended')
    } finally {
      if (sub.stream === undefined) this.dialing--
      // refused (the publisher is full) or broken before its list arrived: try others first
      if (!sub.complete) this.fail(id)
      clearTimeout(snapshotTimer)
      clearTimeout(frameTimer)
      this.drop(sub)
    }
  }

  private lines(payload: Uint8Array): string[] {
    return payload.length === 0 ? [] : Buffer.from(payload).toString('utf8').split('\n')
  }

  private apply(sub: Subscription, type: number, payload: Uint8Array): void {
    switch (type) {
      case FRAME.keys:
      case FRAME.add: {
        if (type === FRAME.keys && sub.complete) throw new Violation('snapshot keys after END')
        if (type === FRAME.add && !sub.complete) throw new Violation('a delta before END')
        const hashes = readHashes(payload)
        if (type === FRAME.keys) {
          for (const h of hashes) sub.pending.push(h)
          if (sub.pending.length > this.cfg.maxKeysPerPeer) throw new Violation('too many keys')
        } else {
          const merged = sortedUnique([...sub.hashes, ...hashes])
          if (merged.length > this.cfg.maxKeysPerPeer) throw new Violation('too many keys')
          sub.hashes = merged
        }
        return
      }
      case FRAME.del: {
        if (!sub.complete) throw new Violation('a delta before END')
        const gone = new Set(readHashes(payload))
        sub.hashes = sub.hashes.filter((h) => !gone.has(h))
        return
      }
      case FRAME.end: {
        if (sub.complete) throw new Violation('a second END')
        sub.hashes = sortedUnique(sub.pending)
        sub.pending = []
        sub.complete = true
        this.membership++
        this.failed.delete(sub.id)
        this.membership++
        this.schedule() // our members changed
        return
      }
      case FRAME.join: {
        let discovered = false
        for (const line of this.lines(payload)) {
          const { id, addrs } = this.memberOf(line)
          if (this.addMember(sub, id, addrs)) discovered = true
          if (sub.members.size > this.cfg.maxMembersPerPeer) throw new Violation('too many members')
        }
        this.membership++
        // a node none of our peers listed before: subscribe to it soon (not for every peer announcing it)
        if (sub.complete && discovered) this.kick()
        return
      }
      case FRAME.leave: {
        for (const id of this.lines(payload)) this.removeMember(sub, id)
        this.membership++
        return
      }
      case FRAME.view: {
        const [keys, members] = Buffer.from(payload).toString('utf8').split(' ').map(Number)
        if (!Number.isSafeInteger(keys) || !Number.isSafeInteger(members))
          throw new Violation('a malformed view')
        if (sub.complete && (keys !== sub.hashes.length || members !== sub.members.size)) {
          // our copy drifted (a lost delta, or a 48-bit hash collision): start over with a snapshot
          this.log.debug({ peer: sub.id, keys, members }, 'key list out of step; subscribing again')
          this.resyncs++
          this.drop(sub)
        }
        return
      }
      default:
        throw new Violation(`an unknown frame type ${type}`)
    }
  }

  private fail(id: string): void {
    const count = (this.failed.get(id)?.count ?? 0) + 1
    this.failed.set(id, { at: Date.now(), count })
    if (this.failed.size > 10_000) this.failed.clear()
    this.membership++
  }

  /**
   * Parses and validates a member line once: every peer announces the same members, so with V peers the
   * same V lines arrive V times; the parsed strings are shared, which keeps V × V member entries small.
   */
  private memberOf(line: string): { id: string; addrs: string[] } {
    const known = this.memberLines.get(line)
    if (known !== undefined) return known
    const [id, ...addrs] = line.split(' ')
    if (id === undefined || addrs.length > MAX_ADDRS_PER_MEMBER) throw new Violation('a malformed member')
    try {
      peerIdFromString(id)
      for (const a of addrs) multiaddr(a)
    } catch {
      throw new Violation('a malformed member')
    }
    if (this.memberLines.size >= 4 * this.cfg.maxMembersPerPeer) this.memberLines.clear()
    const parsed = { id, addrs }
    this.memberLines.set(line, parsed)
    return parsed
  }

  private drop(sub: Subscription): void {
    if (this.subs.get(sub.id) !== sub) return
    for (const m of [...sub.members.keys()]) this.removeMember(sub, m)
    this.subs.delete(sub.id)
    this.membership++
    sub.stream?.abort(new Error('subscription dropped'))
    if (sub.complete) this.schedule() // our members changed
    this.kick()
  }

  private violation(peer: PeerId, reason: string, sub?: Subscription): void {
    const id = peer.toString()
    this.violations++
    this.banned.set(id, Date.now() + this.cfg.banMs)
    this.log.warn({ peer: id, reason }, 'key exchange: peer broke a limit; disconnecting')
    if (sub !== undefined) this.drop(sub)
    this.subscribers.get(id)?.stream.abort(new Error(reason))
    this.subscribers.delete(id)
    void this.node.hangUp(peer).catch(() => undefined)
  }
}
