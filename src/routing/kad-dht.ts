/**
 * Router over a libp2p Kademlia DHT (tcp + noise + yamux, identify, ping) on the `/kagami` protocol prefix, so
 * it can never join a public DHT.
 *
 * Provider → HTTP endpoint: each node puts its peer endpoint URL in its identify agent version
 * (`kagami/<version> peer-url=<url>`). Identify runs on every connection, and libp2p keeps the value in the
 * peer store, so mapping a provider to a URL costs no extra round trip for connected peers (in a cluster
 * of tens of nodes, every node is connected to every other through the routing table). A provider we are
 * not connected to is dialled once (bounded by the caller's deadline) and identified.
 */
import { lookup } from 'node:dns/promises'
import { setMaxListeners } from 'node:events'
import { anySignal } from 'any-signal'
import { noise } from '@chainsafe/libp2p-noise'
import { preSharedKey } from '@libp2p/pnet'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify, type Identify } from '@libp2p/identify'
import type { Connection, Libp2p, PeerId, PeerInfo, PrivateKey } from '@libp2p/interface'
import { type KadDHT, kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { createLibp2p, type Libp2pOptions } from 'libp2p'
import type { Logger } from 'pino'
import { Gauge, type Registry } from 'prom-client'
import { type AbortOptions, untilAborted } from '../abort.js'
import { checkPeerUrl } from '../trust/peer-url.js'
import { replacePnetCipher } from '../trust/pnet-cipher.js'
import { KeyExchange, type KeyExchangeInit, type KeyExchangeStats } from './key-exchange.js'
import { ExpiringProviderDatastore, type ProviderLimits } from './provider-datastore.js'
import { keyToCid, keyToString, type RoutingKey } from './keys.js'
import type { Peer, ResolveOptions, Router } from './router.js'

export const DHT_PROTOCOL = '/kagami/kad/1.0.0'
export const DEFAULT_REPROVIDE_INTERVAL_MS = 15 * 60_000
export const DEFAULT_RECORD_VALIDITY_MS = 75 * 60_000
/** Bootstrap entries dialled per round while the DHT routing table is nearly empty (see bootstrapDials). */
const BOOTSTRAP_PEERS = 3

/** How far the re-provide interval stretches in a sampled view (15 min → 60 min). */
const MAX_REPROVIDE_STRETCH = 4
const AGENT_PREFIX = 'kagami/'
const URL_MARK = ' peer-url='

export interface KadDhtRouterComponents {
  logger: Logger
  metrics?: Registry
}

export interface KadDhtRouterInit {
  /** libp2p listen multiaddrs, e.g. `/ip4/0.0.0.0/tcp/29022`. */
  listen: string[]
  /** This node's peer endpoint URL, carried to other nodes by identify. */
  peerUrl: string
  /** `/ip4/…/tcp/…/p2p/…` multiaddrs, or `dns:<name>:<port>` (every A record of name, e.g. a headless Service). */
  bootstrap?: string[]
  privateKey?: PrivateKey
  /**
   * How often our provider records are re-published while every node holds every list (default 15 min).
   * Once the key exchange's view is sampled (more nodes than its peer set), the interval stretches with
   * the cluster size the exchange sees: × nodes / (peer set + 1), up to 4× and at most 80 % of
   * `recordValidityMs` (see `reprovideEveryMs`).
   */
  reprovideIntervalMs?: number
  /**
   * How long a provider record we store for another node stays valid (default 75 min). One value for every
   * node, not derived from the cluster size: the storer, not the provider, decides when a record expires,
   * and a storer that saw a smaller cluster than the provider would drop its records before they are
   * re-provided.
   */
  recordValidityMs?: number
  /** How often a bootstrap round runs (default 5 s; see `dialBootstrap` for what one dials). */
  rebootstrapIntervalMs?: number
  /** Parallel provides when advertising many keys (default 12; 64 breaks kad-dht, see design.md). */
  advertiseConcurrency?: number
  /** DNS lookup for `dns:` bootstrap entries (tests inject a resolver). */
  resolveHost?: (name: string) => Promise<string[]>
  version?: string
  /** Exchange key lists with connected peers (default true); false leaves lookups to the DHT alone. */
  keyExchange?: boolean
  /**
   * Private network key (swarm.key bytes, see trust/psk.ts): every connection is encrypted with it first, so
   * a node without it cannot connect, learn keys or take part in the DHT. Undefined = open network.
   */
  psk?: Uint8Array
  /**
   * 'when-needed' (default): no DHT provides while the key exchange covers the cluster, and none for keys
   * that many exchange peers announce; 'always': provide every key (bench/routing measures provide speed).
   */
  dhtProvides?: 'when-needed' | 'always'
  /** With 'when-needed', provides start this long after start, once the exchange knows its peers (10 s). */
  provideSettleMs?: number
  /**
   * With 'when-needed', provides also start once the exchange's view has stayed incomplete this long (60 s):
   * a node that cannot reach everyone. The scale bench raises it: its hundreds of nodes on two cores take
   * minutes to settle, where a real cluster, each node on its own CPU, takes seconds.
   */
  incompleteProvideAfterMs?: number
  /**
   * libp2p's connection monitor: a ping stream on every connection every `pingIntervalMs` (default here 60 s,
   * libp2p's 10 s); a failed ping closes the connection. Why 60 s: a node holds ~1.4 connections per
   * exchange peer (up to ~360), and at 10 s these pings were the largest part of its idle routing traffic and
   * CPU (~140 B/s and ~0.4 ms/s per connection, bench/results/scale.md); a departed node's connection closes
   * with its process, and a silent publisher is dropped by the key exchange's heartbeat check (90 s). The
   * scale bench keeps the pings but not the closing: one event loop carrying 50 nodes lags by seconds,
   * which a node on its own CPU does not.
   */
  connectionMonitor?: { pingIntervalMs?: number; abortConnectionOnPingFailure?: boolean }
  /**
   * libp2p's deadlines for a dial and for an inbound connection's upgrade (PSK, noise, yamux), default
   * libp2p's 10 s, a bootstrap dial's (default 3 s, retried every round) and a key subscription's (default
   * 10 s, KeyExchangeInit.dialTimeoutMs). The scale bench stretches them:
   * its processes carry dozens of nodes each and lag by seconds.
   */
  connectionTimeoutMs?: number
  /** Limits of the key exchange (peer set, list sizes, deadlines, rates). */
  keyExchangeInit?: KeyExchangeInit
  /**
   * A key that this many peers in the key exchange already announce is not provided on the DHT (default 8):
   * it is common enough that any node's sampled peer set finds it (see bench/results/scale.md).
   */
  popularHolders?: number
  /** Provider records stored for other nodes: per provider and in total. */
  providerLimits?: Partial<ProviderLimits>
  /** In a sampled view, a connection seen without streams this long is closed (default 2 min; see closeIdle). */
  idleConnectionMs?: number
  /**
   * Accepts a peer's announced endpoint URL given its connection's IP (default: src/trust/peer-url.ts, same
   * IP only). The scale bench's memory transport has no IP and passes its own.
   */
  checkPeerUrl?: (url: string, remoteIp: string | undefined) => string | undefined
  /** libp2p transports (default TCP); the scale bench runs hundreds of nodes over the memory transport. */
  transports?: Libp2pOptions['transports']
  /**
   * The shape of a DHT walk: kad-dht's `disjointPaths` independent walks with `alpha` requests in flight each
   * (kad-dht's defaults: 20 × 10). bench/dht-walk.ts measures what each shape queries and finds.
   */
  dhtQuery?: { disjointPaths?: number; alpha?: number }
}

/** What the routing layer holds and has sent, for the scale bench and metrics. */
export interface RoutingStats {
  exchange: KeyExchangeStats | undefined
  providerRecords: number
  routingTable: number
  connections: number
  pendingProvides: number
  /** provides held back: the view is full, or a sample's lists are not in yet (dhtIdle) */
  providesWaiting: boolean
  provided: number
  /** queued keys not provided because enough exchange peers announce them */
  popularSkipped: number
  /** the current re-provide interval (it follows the cluster size in a sampled view) */
  reprovideEveryMs: number
  /** keys queued again for a provide by the re-provide sweeps */
  reprovideQueued: number
  /** connections closed for carrying no stream in a sampled view (closeIdle) */
  idleClosed: number
}

/** Every A and AAAA record of name (IPv6-primary clusters publish the headless Service as AAAA only). */
async function defaultResolveHost(name: string): Promise<string[]> {
  return (await lookup(name, { all: true, family: 0 })).map((a) => a.address)
}

/** Parses our agent version back into the peer endpoint URL. */
export function peerUrlFromAgent(agent: string | undefined): string | undefined {
  if (agent === undefined || !agent.startsWith(AGENT_PREFIX)) return undefined
  const i = agent.indexOf(URL_MARK)
  if (i < 0) return undefined
  const url = agent.slice(i + URL_MARK.length).trim()
  return /^https?:\/\/[^\s/]+$/.test(url) ? url : undefined
}

/** A kagami peer this node has seen since it started, for the status page. */
export interface KnownPeer {
  id: string
  url: string
  connected: boolean
  /** Unix ms: when the current connection was identified (connected peers only). */
  connectedSince?: number
  /** Unix ms: now for a connected peer, else when it disconnected. */
  lastSeen: number
  /** Keys it announced through the key exchange (connected peers only). */
  keys: number
}

/** Disconnected peers remembered for the status page; older ones are forgotten. */
const MAX_REMEMBERED_PEERS = 256

export class KadDhtRouter implements Router {
  private node: Libp2p<{ dht: KadDHT; identify: Identify }> | undefined
  private readonly log: Logger
  /** Advertised keys by their string form. */
  private readonly advertised = new Map<string, RoutingKey>()
  /** Peer id → peer endpoint URL, learned from identify. */
  private readonly urls = new Map<string, string>()
  private readonly gauge: Gauge | undefined
  private readonly peersGauge: Gauge | undefined
  private bootstrapTimer: NodeJS.Timeout | undefined
  private readonly stopController = new AbortController()
  /** Peer id → when we saw it (identify, disconnect); bounded by MAX_REMEMBERED_PEERS disconnected ones. */
  private readonly seen = new Map<string, { url: string; connectedSince?: number; lastSeen: number }>()

  constructor(
    components: KadDhtRouterComponents,
    private readonly init: KadDhtRouterInit,
  ) {
    this.log = components.logger.child({ component: 'router' })
    // every in-flight provide and lookup listens on the stop signal (and removes itself when done)
    setMaxListeners(Infinity, this.stopController.signal)
    if (components.metrics !== undefined) {
      this.gauge = new Gauge({
        name: 'kagami_advertised_keys',
        help: 'Keys (digests and tags) this node advertises on the DHT',
        registers: [components.metrics],
      })
      const connectedPeers = (): number => this.peers().length
      this.peersGauge = new Gauge({
        name: 'kagami_peers',
        help: 'Connected kagami peers',
        registers: [components.metrics],
        collect() {
          this.set(connectedPeers())
        },
      })
    }
  }

  get peerId(): string | undefined {
    return this.node?.peerId.toString()
  }

  /** Listening multiaddrs with our peer id, for static bootstrap lists in tests and docs. */
  multiaddrs(): Multiaddr[] {
    return this.node?.getMultiaddrs() ?? []
  }

  async start(): Promise<void> {
    const validityMs = this.init.recordValidityMs ?? DEFAULT_RECORD_VALIDITY_MS
    const intervalMs = this.init.reprovideIntervalMs ?? DEFAULT_REPROVIDE_INTERVAL_MS
    this.datastore = new ExpiringProviderDatastore(validityMs, this.init.providerLimits, this.log, (peer) => {
      void this.node?.hangUp(peerIdFromString(peer)).catch(() => undefined)
    })
    if (this.init.psk !== undefined) replacePnetCipher()
    this.node = await createLibp2p({
      privateKey: this.init.privateKey,
      datastore: this.datastore,
      addresses: { listen: this.init.listen },
      transports: this.init.transports ?? [tcp()],
      ...(this.init.psk !== undefined ? { connectionProtector: preSharedKey({ psk: this.init.psk }) } : {}),
      connectionEncrypters: [noise()],
      // no yamux keep-alive (a ping frame every 30 s on every connection): libp2p's connection monitor
      // already pings each connection (below), and at 200 nodes in the scale bench these keep-alives were
      // ~13 % of a settled node's CPU and most of its idle traffic (~200 connections each)
      streamMuxers: [yamux({ enableKeepAlive: false })],
      nodeInfo: {
        userAgent: `${AGENT_PREFIX}${this.init.version ?? '0.1.0'}${URL_MARK}${this.init.peerUrl}`,
      },
      connectionMonitor: {
        pingInterval: this.init.connectionMonitor?.pingIntervalMs ?? 60_000,
        abortConnectionOnPingFailure: this.init.connectionMonitor?.abortConnectionOnPingFailure ?? true,
      },
      connectionManager: {
        // Loopback and one-subnet clusters: every peer shares few source IPs; the default 5 conn/s per host
        // resets bootstrap dials (design.md §4).
        inboundConnectionThreshold: 1000,
        maxIncomingPendingConnections: 100,
        ...(this.init.connectionTimeoutMs !== undefined
          ? {
              dialTimeout: this.init.connectionTimeoutMs,
              addressDialTimeout: this.init.connectionTimeoutMs,
              inboundUpgradeTimeout: this.init.connectionTimeoutMs,
            }
          : {}),
        // the key exchange alone may hold 256 subscriptions and 320 subscribers (mostly the same peers)
        maxConnections: 1024,
      },
      services: {
        identify: identify(),
        ping: ping(),
        dht: kadDHT({
          protocol: DHT_PROTOCOL,
          clientMode: false,
          // Cluster nodes talk over private addresses; keep them all.
          peerInfoMapper: passthroughMapper,
          // A frozen peer must not hold a lookup or provide for long.
          networkDialTimeout: { minTimeout: 1000, maxTimeout: 2000 },
          allowQueryWithZeroPeers: true,
          ...this.init.dhtQuery,
          providers: {
            provideValidity: Math.ceil(validityMs / 1000),
            cleanupInterval: Math.max(60, Math.ceil(intervalMs / 1000)),
          },
          reprovide: {
            // how often kad-dht drops expired records of others; our own records are re-provided by
            // provideDue() at an interval that follows the cluster size, which kad-dht's fixed threshold
            // cannot: it re-provides one of ours only once it expired (a backstop)
            interval: intervalMs,
            validity: validityMs,
            threshold: 0,
          },
        }),
      },
    })
    this.datastore.setSelf(this.node.peerId.toString())
    if (this.init.keyExchange !== false) {
      this.exchange = new KeyExchange(
        this.node,
        () => this.advertised.keys(),
        this.log,
        // a subscription's dial is a dial: the same deadline as libp2p's own, unless set apart
        { dialTimeoutMs: this.init.connectionTimeoutMs, ...this.init.keyExchangeInit },
        () => this.routingTablePeers(),
      )
      await this.exchange.start()
    }
    this.node.addEventListener('peer:identify', (e) => {
      this.identifiedPeers.add(e.detail.peerId.toString())
      const announced = peerUrlFromAgent(e.detail.agentVersion)
      if (announced === undefined) return
      // Only a URL on the IP the peer connects from: never another host, never our own endpoint.
      const ip = e.detail.connection.remoteAddr
        .getComponents()
        .find((c) => c.name === 'ip4' || c.name === 'ip6')?.value
      const url = (this.init.checkPeerUrl ?? checkPeerUrl)(announced, ip)
      if (url === undefined || url === this.init.peerUrl) {
        this.log.warn(
          { peer: e.detail.peerId.toString(), url: announced, remoteIp: ip },
          'ignoring a peer endpoint URL that does not match the peer’s connection',
        )
        return
      }
      const id = e.detail.peerId.toString()
      this.urls.set(id, url)
      const now = Date.now()
      this.seen.delete(id) // re-insert: the map stays in last-seen order
      this.seen.set(id, { url, connectedSince: this.seen.get(id)?.connectedSince ?? now, lastSeen: now })
    })
    // Keys advertised while the routing table was empty were stored only here; provide them again once the
    // first peers are in the table, so lookups elsewhere find them locally instead of waiting for a reprovide.
    const table = (this.node.services.dht as unknown as { routingTable: EventTarget & { size: number } })
      .routingTable
    this.routingTable = table
    table.addEventListener('peer:add', () => {
      if (!this.providedAlone) return
      clearTimeout(this.reprovideTimer)
      this.reprovideTimer = setTimeout(() => this.reprovideAll(), 1000)
      this.reprovideTimer.unref()
    })
    // Provider records outlive a stopped node; forgetting its URL makes resolve dial it again, which a dead
    // node refuses at once, so it is skipped instead of handed to the mirror.
    this.node.addEventListener('peer:disconnect', (e) => {
      const id = e.detail.toString()
      this.urls.delete(id)
      this.identifiedPeers.delete(id)
      const was = this.seen.get(id)
      if (was === undefined) return
      this.seen.delete(id)
      this.seen.set(id, { url: was.url, lastSeen: Date.now() })
      if (this.seen.size > MAX_REMEMBERED_PEERS) {
        for (const [old, s] of this.seen) {
          if (s.connectedSince === undefined) {
            this.seen.delete(old)
            break
          }
        }
      }
    })
    this.log.info({ peerId: this.peerId, addrs: this.multiaddrs().map(String) }, 'dht started')
    void this.bootstrap()
    this.startedAt = Date.now()
    this.sweepTimer = setInterval(() => this.sweep(), 2_000)
    this.sweepTimer.unref()
    const every = this.init.rebootstrapIntervalMs ?? 5_000
    this.bootstrapTimer = setInterval(() => void this.bootstrap(), every)
    this.bootstrapTimer.unref()
  }

  /** One bootstrap round (`dialBootstrap`); runs at start and then every `rebootstrapIntervalMs`. */
  private async bootstrap(): Promise<void> {
    // one round at a time: a round waits for its dials (and a `dns:` lookup), which may outlast the interval
    if (this.bootstrapping) return
    this.bootstrapping = true
    try {
      await this.dialBootstrap()
    } finally {
      this.bootstrapping = false
      this.bootstrapped = true
    }
  }

  private bootstrapping = false
  private bootstrapped = false
  /** `dns:` bootstrap names whose last lookup failed (logged once when they fail, once when they recover). */
  private readonly unresolved = new Set<string>()

  private async dialBootstrap(): Promise<void> {
    const node = this.node
    if (node === undefined || (this.init.bootstrap ?? []).length === 0) return
    const dials = this.bootstrapDials()
    if (dials === 0) return // nothing to dial this round: no DNS lookup either
    const own = new Set(node.getMultiaddrs().map((m) => m.decapsulateCode(421).toString()))
    const targets: Multiaddr[] = []
    for (const entry of this.init.bootstrap ?? []) {
      if (entry.startsWith('dns:')) {
        const [, name, port] = entry.split(':') as [string, string, string]
        try {
          const hosts = await (this.init.resolveHost ?? defaultResolveHost)(name)
          for (const ip of hosts)
            targets.push(multiaddr(`/${ip.includes(':') ? 'ip6' : 'ip4'}/${ip}/tcp/${port}`))
          if (this.unresolved.delete(name)) this.log.info({ name }, 'bootstrap name resolves again')
        } catch (err) {
          // A wrong clusterDomain isolates the node while it reports ready: warn once per change, not per round
          if (!this.unresolved.has(name))
            this.log.warn({ err: (err as Error).message, name }, 'bootstrap name does not resolve')
          this.unresolved.add(name)
        }
      } else {
        targets.push(multiaddr(entry))
      }
    }
    const connected = new Set(node.getConnections().map((c) => c.remoteAddr.decapsulateCode(421).toString()))
    const open = targets
      .filter(
        (t) =>
          !own.has(t.decapsulateCode(421).toString()) && !connected.has(t.decapsulateCode(421).toString()),
      )
      .filter((t) => t.getComponents().find((c) => c.name === 'p2p')?.value !== node.peerId.toString())
    if (dials === 1 && open.length > 0) this.lastBootstrapHeal = Date.now()
    for (let i = 0; i < Math.min(dials, open.length); i++) {
      const j = i + Math.floor(Math.random() * (open.length - i))
      ;[open[i], open[j]] = [open[j]!, open[i]!]
    }
    await Promise.all(
      open.slice(0, dials).map(async (t) => {
        const signal = anySignal([
          AbortSignal.timeout(this.init.connectionTimeoutMs ?? 3000),
          this.stopController.signal,
        ])
        try {
          await node.dial(t, { signal })
        } catch (err) {
          this.log.debug({ err: (err as Error).message, addr: t.toString() }, 'bootstrap dial failed')
        } finally {
          signal.clear()
        }
      }),
    )
  }

  /**
   * How many bootstrap entries a round dials, at random among those not connected: 3 while our DHT routing
   * table holds fewer than 3 peers, then one a minute (two halves of a cluster that started apart still find
   * each other). Not every entry: a `dns:` entry resolves to every kagami pod (the chart's headless Service),
   * and dialling them all each round made every node of an N-node cluster open N connections as it started,
   * and dial again each one the connection manager pruned. The DHT and the key exchange's member lists find
   * the rest.
   */
  private bootstrapDials(): number {
    if (this.routingTableSize() < BOOTSTRAP_PEERS) return BOOTSTRAP_PEERS
    return Date.now() - this.lastBootstrapHeal >= 60_000 ? 1 : 0
  }

  private lastBootstrapHeal = 0

  async stop(): Promise<void> {
    this.stopController.abort()
    clearInterval(this.bootstrapTimer)
    clearTimeout(this.reprovideTimer)
    clearInterval(this.sweepTimer)
    this.exchange?.stop()
    await this.node?.stop()
    this.node = undefined
  }

  isReady(): boolean {
    // Ready once it has peers in its routing table, or once the first bootstrap round found nobody to
    // reach (a lone node is ready by itself).
    return this.node?.status === 'started' && (this.routingTableSize() > 0 || this.bootstrapped)
  }

  private dht(): KadDHT {
    if (this.node === undefined) throw new Error('router is not started')
    return this.node.services.dht
  }

  /**
   * Advertises keys: peers in the key exchange learn them at once; DHT provides follow in one shared
   * background queue with bounded concurrency (kad-dht breaks at ~64 parallel provides), in the order given
   * (callers put tags and manifests first).
   *
   * The DHT is only needed by nodes whose key exchange does not cover the cluster. So provides wait while
   * our exchange is a full view (every node holds every list: a provide would cost ~20 messages for
   * nothing), and a key that `popularHolders` exchange peers already announce is not provided (any node's
   * sampled peer set finds it); both are looked at again every `sweepMs` and at each reprovide interval.
   */
  async advertise(keys: RoutingKey[], options: AbortOptions = {}): Promise<void> {
    const fresh = keys.filter((k) => !this.advertised.has(keyToString(k)))
    for (const k of fresh) this.advertised.set(keyToString(k), k)
    this.gauge?.set(this.advertised.size)
    if (fresh.length === 0) return
    this.exchange?.changed()
    if (this.routingTableSize() === 0) this.providedAlone = true
    for (const key of fresh) this.provideQueue.set(keyToString(key), { key, signal: options.signal })
    this.startWorkers()
  }

  /** DHT provides still queued or running (the key exchange has already told its peers). */
  pendingProvides(): number {
    return this.provideQueue.size + this.workers
  }

  private exchange: KeyExchange | undefined
  private datastore: ExpiringProviderDatastore | undefined
  private routingTable: { size: number } | undefined
  /** Set when keys were provided with an empty routing table (a lone node, or before bootstrap finished). */
  private providedAlone = false
  private reprovideTimer: NodeJS.Timeout | undefined
  private sweepTimer: NodeJS.Timeout | undefined
  private lastSweep = Date.now()

  /** Ids of the peers in the DHT routing table (kad-dht keeps live ones: it pings before evicting). */
  private *routingTablePeers(): Iterable<string> {
    const kb = (this.routingTable as { kb?: { toIterable(): Iterable<{ peerId: PeerId }> } } | undefined)?.kb
    for (const contact of kb?.toIterable() ?? []) yield contact.peerId.toString()
  }

  /** Peers in the DHT routing table. */
  routingTableSize(): number {
    return this.routingTable?.size ?? 0
  }

  routingStats(): RoutingStats {
    return {
      exchange: this.exchange?.stats(),
      providerRecords: this.datastore?.providerRecords() ?? 0,
      routingTable: this.routingTableSize(),
      connections: this.node?.getConnections().length ?? 0,
      pendingProvides: this.pendingProvides(),
      providesWaiting: this.dhtIdle(),
      provided: this.provided.size,
      popularSkipped: this.popularSkipped,
      reprovideEveryMs: this.reprovideEveryMs(),
      reprovideQueued: this.reprovideQueued,
      idleClosed: this.idleClosed,
    }
  }

  /** Queues every advertised key that is not on the DHT yet. */
  private reprovideAll(): void {
    this.providedAlone = false
    let queued = 0
    for (const [s, key] of this.advertised) {
      if (this.provided.has(s) || this.provideQueue.has(s)) continue
      this.provideQueue.set(s, { key })
      queued++
    }
    this.reprovideQueued += queued
    this.log.debug({ keys: queued, peers: this.routingTableSize() }, 'providing keys not on the DHT yet')
    this.startWorkers()
  }

  /**
   * Whether provides wait. While the cluster fits the exchange's peer set, every node holds every list and
   * nobody looks keys up on the DHT: provides wait unless the view stays incomplete for a minute (a node
   * that cannot reach everyone). A larger cluster needs the DHT for keys outside each node's sample; there
   * provides start once the sample's lists are in (or after that minute), because only they show which keys
   * are popular: a node providing before would provide all its ~3,000 keys instead of its few hundred rare
   * ones, and a DaemonSet rollout of a sampled cluster did exactly that (200 nodes in the scale bench,
   * 590,000 provides queued at once, bench/results/scale.md).
   */
  private dhtIdle(): boolean {
    const exchange = this.exchange
    if (this.init.dhtProvides === 'always' || exchange === undefined) return false
    const now = Date.now()
    if (now - this.startedAt < (this.init.provideSettleMs ?? 10_000)) return true
    if (exchange.hasOtherPeers()) return false
    const sampled = exchange.saturated()
    if (sampled ? exchange.sampleComplete() : exchange.complete()) {
      this.incompleteSince = undefined
      return !sampled
    }
    this.incompleteSince ??= now
    return now - this.incompleteSince < (this.init.incompleteProvideAfterMs ?? 60_000)
  }

  private incompleteSince: number | undefined
  private startedAt = Date.now()

  private sweep(): void {
    this.reidentify()
    this.closeIdle()
    if (Date.now() - this.lastSweep >= this.reprovideEveryMs()) {
      this.lastSweep = Date.now()
      this.reprovideAll() // popular keys that became rare, and keys that waited
    }
    this.provideDue()
    this.startWorkers()
  }

  /**
   * How often each of our provider records is re-published. Re-providing is most of a node's routing
   * traffic in a sampled cluster: ~300 rare keys, each provide a DHT walk plus 20 stores (~17 KB × log2 N
   * cluster-wide, bench/results/scale.md), so at 5,000 nodes every 15 min cost ~70 KiB/s per node against
   * the 50 KiB/s goal. The interval therefore grows with the cluster the key exchange sees (its known nodes
   * over its peer set), from `reprovideIntervalMs` up to 4× that, and stays at most 80 % of the record
   * validity so a record is always re-provided before the nodes storing it drop it. In a full view provides
   * hardly happen (a miss is answered from memory) and the interval is the configured one.
   */
  reprovideEveryMs(): number {
    const base = this.init.reprovideIntervalMs ?? DEFAULT_REPROVIDE_INTERVAL_MS
    const validity = this.init.recordValidityMs ?? DEFAULT_RECORD_VALIDITY_MS
    const exchange = this.exchange
    if (exchange === undefined || !exchange.saturated()) return base
    const stretch = Math.min(MAX_REPROVIDE_STRETCH, exchange.knownNodes() / (exchange.maxPeers() + 1))
    return Math.max(base, Math.min(base * stretch, validity * 0.8))
  }

  /** Our records provided at least one interval ago go back in the queue (the next provide refreshes them). */
  private provideDue(): void {
    if (this.provided.size === 0) return
    const cutoff = Date.now() - this.reprovideEveryMs()
    for (const [name, at] of this.provided) {
      if (at > cutoff) continue
      this.provided.delete(name)
      const key = this.advertised.get(name)
      if (key === undefined || this.provideQueue.has(name)) continue
      this.provideQueue.set(name, { key })
      this.reprovideQueued++
    }
  }

  /**
   * In a sampled view, closes connections that carried no stream for `idleConnectionMs`. kad-dht keeps
   * every connection a walk or a provide opened, and libp2p prunes only past `maxConnections` (1024): in a
   * large cluster every node would end up holding ~1,000 connections (~100 KiB and a ping a minute each) to
   * peers it asked once. The exchange's connections carry its long-lived streams and stay; so does every
   * connection of a full view. A connection used between two sweeps may still be closed: the next walk
   * that needs that peer dials it again.
   */
  private closeIdle(): void {
    const node = this.node
    if (node === undefined || this.exchange?.saturated() !== true) return
    const now = Date.now()
    for (const conn of node.getConnections()) {
      if (conn.streams.length > 0 || conn.status !== 'open') {
        this.idleSince.delete(conn)
        continue
      }
      const since = this.idleSince.get(conn)
      if (since === undefined) this.idleSince.set(conn, now)
      else if (now - since >= (this.init.idleConnectionMs ?? 120_000)) {
        this.idleClosed++
        void conn.close().catch((err: Error) => conn.abort(err))
      }
    }
  }

  private readonly idleSince = new WeakMap<Connection, number>()
  private idleClosed = 0

  /** Keys queued again by the sweeps (for the scale bench and tests). */
  private reprovideQueued = 0

  /** Connected peers whose identify finished (kagami or not). */
  private readonly identifiedPeers = new Set<string>()
  /** Peers being identified again, and how often each connection was. */
  private readonly identifying = new Set<string>()
  private readonly reidentified = new WeakMap<Connection, number>()

  /**
   * Identify runs once per connection, when it opens, with a 5 s deadline. A node joining a cluster opens a
   * few hundred connections at once, and under that load some identifies time out; libp2p never runs them
   * again. That peer's endpoint URL then stays unknown for as long as the connection lives: the key
   * exchange still holds its list (it subscribes to unidentified connections too) but `resolve` cannot
   * hand the peer to the mirror, so nothing it pulls becomes visible from here (the 100-node scale run: 5 of
   * 8 new images not resolvable from every node within 15 s). So a connection open for a while whose peer
   * is not identified is identified again, up to 3 times.
   */
  private reidentify(): void {
    const node = this.node
    if (node === undefined) return
    const now = Date.now()
    for (const conn of node.getConnections()) {
      const id = conn.remotePeer.toString()
      if (this.identifiedPeers.has(id) || this.identifying.has(id)) continue
      if (conn.status !== 'open' || now - conn.timeline.open < 6_000) continue
      const tries = this.reidentified.get(conn) ?? 0
      if (tries >= 3) continue
      this.reidentified.set(conn, tries + 1)
      this.identifying.add(id)
      const signal = anySignal([AbortSignal.timeout(10_000), this.stopController.signal])
      node.services.identify
        .identify(conn, { signal })
        .catch((err: Error) => this.log.debug({ err: err.message, peer: id }, 'identify failed again'))
        .finally(() => {
          signal.clear()
          this.identifying.delete(id)
        })
    }
  }

  private startWorkers(): void {
    if (this.dhtIdle()) return
    while (this.workers < (this.init.advertiseConcurrency ?? 12) && this.workers < this.provideQueue.size) {
      this.workers++
      void this.provideWorker().finally(() => this.workers--)
    }
  }

  private popularSkipped = 0
  private readonly provideQueue = new Map<string, { key: RoutingKey; signal?: AbortSignal }>()
  /** Keys whose provide reached peers → when; provideDue() provides them again one interval later. */
  private readonly provided = new Map<string, number>()
  private workers = 0

  private async provideWorker(): Promise<void> {
    while (!this.dhtIdle()) {
      const next = this.provideQueue.entries().next()
      if (next.done === true) return
      const [name, { key, signal }] = next.value
      this.provideQueue.delete(name)
      try {
        if (signal?.aborted === true || this.stopController.signal.aborted) continue
        if (!this.advertised.has(name) || this.provided.has(name)) continue // withdrawn or done meanwhile
        if (this.init.dhtProvides !== 'always' && this.exchange !== undefined) {
          if (this.exchange.holders(name).length >= (this.init.popularHolders ?? 8)) {
            this.popularSkipped++
            continue
          }
        }
        const s = anySignal([signal, this.stopController.signal])
        try {
          for await (const _ of this.dht().provide(await keyToCid(key), { signal: s })) {
            // drain: provide resolves once the record is stored on the closest peers
          }
          if (this.routingTableSize() > 0) this.provided.set(name, Date.now())
        } finally {
          s.clear()
        }
      } catch (err) {
        // A lone node has nobody to store at; its local record still answers lookups.
        this.log.debug({ err: (err as Error).message, key: name }, 'provide incomplete')
      }
    }
  }

  /** Stops re-providing and drops our local record, so lookups that reach us no longer return us. */
  async withdraw(keys: RoutingKey[], options: AbortOptions = {}): Promise<void> {
    const dht = this.dht()
    for (const key of keys) {
      this.advertised.delete(keyToString(key))
      this.provided.delete(keyToString(key))
      await dht.cancelReprovide(await keyToCid(key), options)
    }
    this.exchange?.changed()
    this.gauge?.set(this.advertised.size)
  }

  advertisedCount(): number {
    return this.advertised.size
  }

  /** The peer endpoint URL of a provider: learned from identify, else dial it once and wait for identify. */
  private async urlOf(peer: PeerInfo, signal: AbortSignal): Promise<string | undefined> {
    const node = this.node
    const id = peer.id.toString()
    const known = this.urls.get(id)
    if (known !== undefined || node === undefined || signal.aborted) return known
    try {
      const identified = new Promise<void>((resolve) => {
        const done = (): void => {
          node.removeEventListener('peer:identify', onIdentify)
          signal.removeEventListener('abort', done)
          resolve()
        }
        const onIdentify = (e: CustomEvent<{ peerId: PeerId }>): void => {
          if (e.detail.peerId.equals(peer.id)) done()
        }
        node.addEventListener('peer:identify', onIdentify)
        signal.addEventListener('abort', done, { once: true })
        setTimeout(done, 1000).unref()
      })
      if (peer.multiaddrs.length > 0) await node.peerStore.merge(peer.id, { multiaddrs: peer.multiaddrs })
      await node.dial(peer.id, { signal })
      if (!this.urls.has(id)) await identified
    } catch (err) {
      this.log.debug({ err: (err as Error).message, peer: id }, 'provider not reachable')
    }
    return this.urls.get(id)
  }

  /**
   * Yields providers as the DHT finds them: never us, each once, only with a known peer endpoint. Uses
   * `dht.findProviders` directly (contentRouting's version keeps querying after the consumer breaks).
   */
  async *resolve(key: RoutingKey, options: ResolveOptions = {}): AsyncIterable<Peer> {
    const node = this.node
    if (node === undefined) return
    const controller = new AbortController()
    // any-signal, not AbortSignal.any: the long-lived stop signal would keep every request's signal alive
    const signal = anySignal([controller.signal, this.stopController.signal, options.signal])
    const self = node.peerId.toString()
    const seen = new Set<string>()
    let yielded = 0
    let dhtEvents: AsyncIterator<unknown> | undefined
    try {
      // Connected peers that announced the key: known without a network round trip.
      for (const id of this.exchange?.holders(keyToString(key)) ?? []) {
        const url = this.urls.get(id)
        if (url === undefined || id === self || seen.has(id)) continue
        seen.add(id)
        yield { id, url }
        if (++yielded === options.limit) return
      }
      // Up to maxPeers nodes the exchange is a full view: when every node we know of has sent us its list
      // and sees the same members, nobody else can have the key, and a miss is answered now instead of
      // after a DHT query.
      if (this.exchange?.complete() === true) return
      // kad-dht ends a query only once its in-flight requests end, which under load took 20-30 s past a
      // 250 ms deadline (the 60-node scale run): each step is raced against our signal, and the query left
      // to finish in the background (its own signal is aborted in `finally`)
      const cid = await untilAborted(keyToCid(key), signal) // WebCrypto: queued behind the thread pool
      const events = node.services.dht.findProviders(cid, { signal })[Symbol.asyncIterator]()
      dhtEvents = events
      for (;;) {
        const next = await untilAborted(events.next(), signal)
        if (next.done === true) break
        const event = next.value
        if (event.name !== 'PROVIDER') continue
        for (const provider of event.providers) {
          const id = provider.id.toString()
          if (id === self || seen.has(id)) continue
          seen.add(id)
          const url = await untilAborted(this.urlOf(provider, signal), signal)
          if (url === undefined) continue
          yield { id, url }
          if (++yielded === options.limit) return
        }
      }
    } catch (err) {
      if (!signal.aborted)
        this.log.debug({ err: (err as Error).message, key: keyToString(key) }, 'lookup failed')
    } finally {
      controller.abort() // the consumer broke out or we are done: end the query
      signal.clear()
      // not awaited: it settles once kad-dht's query has wound down
      dhtEvents?.return?.().catch(() => undefined)
    }
  }

  /** Whether `peerId` is connected now (with a PSK: a member of the private network). */
  isConnected(peerId: string): boolean {
    return this.node?.getConnections().some((c) => c.remotePeer.toString() === peerId) ?? false
  }

  /** Every kagami peer seen since start, connected ones first (the status page's peer table). */
  knownPeers(): KnownPeer[] {
    const connected = new Set(this.peers().map((p) => p.id))
    const now = Date.now()
    const out: KnownPeer[] = []
    for (const [id, s] of this.seen) {
      const isConnected = connected.has(id)
      out.push({
        id,
        url: this.urls.get(id) ?? s.url,
        connected: isConnected,
        connectedSince: isConnected ? s.connectedSince : undefined,
        lastSeen: isConnected ? now : s.lastSeen,
        keys: isConnected ? (this.exchange?.keyCount(id) ?? 0) : 0,
      })
    }
    return out.sort((a, b) => Number(b.connected) - Number(a.connected) || b.lastSeen - a.lastSeen)
  }

  /**
   * Keys peers announced, by name, for a partial-name search. None: the key exchange holds peers' lists as
   * 48-bit hashes (bounded memory at scale), so a search matches this node's own names partially and looks an
   * exact name or digest up across the cluster.
   */
  knownKeys(): Iterable<string> {
    return []
  }

  /** Connected peers whose peer endpoint we know. */
  peers(): Peer[] {
    const node = this.node
    if (node === undefined) return []
    const out = new Map<string, Peer>()
    for (const conn of node.getConnections()) {
      const id = conn.remotePeer.toString()
      const url = this.urls.get(id)
      if (url !== undefined) out.set(id, { id, url })
    }
    return [...out.values()]
  }
}

export function kadDhtRouter(components: KadDhtRouterComponents, init: KadDhtRouterInit): KadDhtRouter {
  return new KadDhtRouter(components, init)
}
