/**
 * One process of the scale bench: it runs a share of the nodes (real `KadDhtRouter`s: libp2p over TCP on
 * 127.0.0.1 with the PSK, noise, yamux, kad-dht and the key exchange, exactly as `kagami run` builds them)
 * and does what the coordinator (bench/scale.ts) asks over the IPC channel. Lookups and visibility are timed
 * here, next to the router, so IPC never enters a measurement; every answer carries this process's
 * event-loop delay, so a latency that includes its own CPU starvation is visible as such.
 */
import type { Libp2p } from '@libp2p/interface'
import type { KadDHT } from '@libp2p/kad-dht'
// the one place every libp2p connection's received bytes pass (encrypted, muxed: the real wire bytes);
// a transitive dependency of libp2p, imported here only to count
import { AbstractMultiaddrConnection } from '@libp2p/utils'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import pino from 'pino'
import { DAEMON_BUFFER_POOL_BYTES } from '../src/exec-daemon.js'
import { KadDhtRouter, type RoutingStats } from '../src/routing/kad-dht.js'
import { digestOf } from '../src/oci/index.js'
import { digestKey, keyToCid, keyToString, type RoutingKey } from '../src/routing/keys.js'
import { nodeKeys, type Workload } from './scale-workload.js'

export interface StartArgs {
  index: number
  bootstrap: string[]
  maxPeers: number
  workload: Workload
  pskHex: string
  /** bench/dht-walk.ts: no key exchange and no keys, kad-dht alone with this walk shape */
  dhtOnly?: { disjointPaths?: number; alpha?: number }
}

/** One DHT operation (calibrate): its time, the peers that answered, and for a find its first provider. */
export interface DhtOp {
  ms: number
  queried: number
  errors: number
  firstProviderMs?: number
  /** why the operation ended early (its 10-s deadline, or kad-dht's error) */
  failed?: string
}

export interface WorkerStats {
  nodes: { index: number; stats: RoutingStats }[]
  wireBytes: number
  /** event-loop delay since the last reset (ms) */
  loopP99Ms: number
  loopMaxMs: number
  heapBytes: number
  cpuMs: number
}

/** Absolute milliseconds, comparable across the bench's processes. */
export const now = (): number => performance.timeOrigin + performance.now()

Buffer.poolSize = DAEMON_BUFFER_POOL_BYTES // as in the daemon (src/main.ts)

const nodes = new Map<number, KadDhtRouter>()
const logCounts = new Map<string, number>()
const logger = pino(
  { level: process.env.KAGAMI_BENCH_LOG ?? 'silent' },
  {
    write: (line: string) => {
      // counted, not printed: hundreds of nodes would drown the terminal (KAGAMI_BENCH_LOG=debug to count)
      const l = JSON.parse(line) as { msg?: string; err?: string }
      const msg = `${l.msg ?? '?'}${l.err !== undefined ? `: ${l.err.replace(/12D3\w+/g, 'P')}` : ''}`
      logCounts.set(msg, (logCounts.get(msg) ?? 0) + 1)
    },
  },
)

let wireBytes = 0
const proto = AbstractMultiaddrConnection.prototype as unknown as {
  onData(data: { byteLength: number }): void
}
const onData = proto.onData
proto.onData = function (this: object, data: { byteLength: number }) {
  // the PSK layer (@libp2p/pnet's BoxMessageStream) is a connection too and passes on the same bytes
  // decrypted: counting it as well counted every byte twice (results before session 15; scale-model.ts)
  if (this.constructor.name !== 'BoxMessageStream') wireBytes += data.byteLength
  return onData.call(this, data)
}
const loop = monitorEventLoopDelay({ resolution: 10 })
loop.enable()

function node(index: number): KadDhtRouter {
  const r = nodes.get(index)
  if (r === undefined) throw new Error(`no node ${index} here`)
  return r
}

function dhtOf(router: KadDhtRouter): KadDHT {
  // bench only: the calibration talks to kad-dht directly, below the key exchange
  return (router as unknown as { node: Libp2p<{ dht: KadDHT }> }).node.services.dht
}

async function firstPeer(
  router: KadDhtRouter,
  key: RoutingKey,
  timeoutMs: number,
): Promise<{ ms: number; id?: string }> {
  const t0 = performance.now()
  for await (const p of router.resolve(key, { signal: AbortSignal.timeout(timeoutMs), limit: 1 }))
    return { ms: performance.now() - t0, id: p.id }
  return { ms: performance.now() - t0 }
}

/** The state of `router` towards `want` (bench only: reads private fields), for a probe that timed out. */
function diagnose(router: KadDhtRouter, key: RoutingKey, want: string): string {
  const r = router as unknown as {
    urls: Map<string, string>
    exchange: {
      holders(k: string): string[]
      subs: Map<string, { complete: boolean; hashes: Float64Array; stream?: { status: string } }>
      identified: Set<string>
      kagamiPeers: Set<string>
      failed: Map<string, { count: number }>
      incompleteReason(): string | undefined
    }
    node: Libp2p
  }
  const sub = r.exchange.subs.get(want)
  const conns = r.node.getConnections().filter((c) => c.remotePeer.toString() === want)
  return [
    `holder=${r.exchange.holders(keyToString(key)).includes(want)}`,
    `url=${r.urls.has(want)}`,
    `sub=${sub === undefined ? 'none' : `${sub.complete ? 'complete' : 'arriving'}/${sub.stream?.status ?? 'dialling'}`}`,
    `identified=${r.exchange.identified.has(want)}`,
    `kagami=${r.exchange.kagamiPeers.has(want)}`,
    `failed=${r.exchange.failed.get(want)?.count ?? 0}`,
    `conns=${conns.map((c) => `${c.direction[0]}:${c.status}`).join(',')}`,
    `complete=${r.exchange.incompleteReason() === undefined}`,
  ].join(' ')
}

/** Whether `router.resolve(key)` yields `want` from the key exchange (its list holds the key, its URL known). */
function resolvableFromMemory(router: KadDhtRouter, key: RoutingKey, want: string): boolean {
  const r = router as unknown as { urls: Map<string, string>; exchange?: { holders(k: string): string[] } }
  return r.urls.has(want) && (r.exchange?.holders(keyToString(key)).includes(want) ?? false)
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

function heapBytes(gc: boolean): number {
  if (gc) (globalThis as { gc?: () => void }).gc?.()
  const m = process.memoryUsage()
  return m.heapUsed + m.arrayBuffers
}

const ops = {
  async start(a: StartArgs): Promise<{ peerId: string; addrs: string[]; keys: number }> {
    const router = new KadDhtRouter(
      { logger },
      {
        listen: ['/ip4/127.0.0.1/tcp/0'],
        peerUrl: `http://127.0.0.1:${20_000 + a.index}`,
        bootstrap: a.bootstrap,
        // the swarm.key form, as src/trust/psk.ts loads it
        psk: new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${a.pskHex}`),
        // What a real node would not meet: each process here carries up to 50 nodes on a shared 2-core
        // machine, and its event loop lags by seconds while they settle. So a failed ping does not close a
        // connection, deadlines meant for a stuck peer are stretched, and the DHT-provide fallback for a view
        // that stays incomplete (a real cluster settles in seconds) waits for 60 min. Everything else, and
        // every byte sent, is as `kagami run` does it.
        connectionMonitor: {
          abortConnectionOnPingFailure: false,
          // SCALE_PING_INTERVAL_MS: libp2p's connection pings less often (upkeep relaxed, see scale.ts)
          pingIntervalMs:
            process.env.SCALE_PING_INTERVAL_MS !== undefined
              ? Number(process.env.SCALE_PING_INTERVAL_MS)
              : undefined,
        },
        // a dial or an upgrade here takes ~8 event-loop turns on two lagging processes: at libp2p's 10 s,
        // 60 % of a sampled 120-node run's subscription dials timed out (each a wasted handshake, retried)
        connectionTimeoutMs: 60_000,
        // (a 200-node full view takes ~15 min to settle here; the fallback must not start in the middle)
        incompleteProvideAfterMs: 3_600_000,
        // SCALE_PROVIDE_CONCURRENCY: fewer provides at once per node (see ScaleResult.provideConcurrency)
        advertiseConcurrency:
          process.env.SCALE_PROVIDE_CONCURRENCY !== undefined
            ? Number(process.env.SCALE_PROVIDE_CONCURRENCY)
            : undefined,
        keyExchange: a.dhtOnly === undefined,
        dhtQuery: a.dhtOnly,
        keyExchangeInit: {
          maxPeers: a.maxPeers,
          // the daemon's subscriber cap (320), not 1.25 × P: with P = 64 a sample's in-degree varies around
          // 64 (the XOR-closest half is uneven), and 80 refused enough subscriptions to stall the settle
          sendTimeoutMs: 60_000,
          snapshotTimeoutMs: 120_000,
          // SCALE_HEARTBEAT_MS: the exchange's heartbeat less often (upkeep relaxed, see scale.ts)
          heartbeatMs:
            process.env.SCALE_HEARTBEAT_MS !== undefined ? Number(process.env.SCALE_HEARTBEAT_MS) : undefined,
        },
      },
    )
    await router.start()
    nodes.set(a.index, router)
    const { keys } = a.dhtOnly === undefined ? nodeKeys(a.workload, a.index) : { keys: [] }
    await router.advertise(keys)
    return { peerId: router.peerId ?? '', addrs: router.multiaddrs().map(String), keys: keys.length }
  },
  async advertise(a: { index: number; keys: RoutingKey[] }): Promise<void> {
    await node(a.index).advertise(a.keys)
  },
  async withdraw(a: { index: number; keys: RoutingKey[] }): Promise<void> {
    await node(a.index).withdraw(a.keys)
  },
  async stop(a: { index: number }): Promise<{ exchangeBytesSent: number }> {
    const r = node(a.index)
    const sent = r.routingStats().exchange?.bytesSent ?? 0
    nodes.delete(a.index)
    await r.stop()
    return { exchangeBytesSent: sent }
  },
  stats(a: { gc?: boolean; resetLoop?: boolean }): WorkerStats {
    const out: WorkerStats = {
      nodes: [...nodes].map(([index, r]) => ({ index, stats: r.routingStats() })),
      wireBytes,
      loopP99Ms: loop.percentile(99) / 1e6,
      loopMaxMs: loop.max / 1e6,
      heapBytes: heapBytes(a.gc === true),
      cpuMs: (process.cpuUsage().user + process.cpuUsage().system) / 1000,
    }
    if (a.resetLoop === true) loop.reset()
    return out
  },
  logs(): Record<string, number> {
    return Object.fromEntries(logCounts)
  },
  /**
   * Lookups one after another (never two at once in this process): first provider, or the end of a miss.
   * Stops before a lookup that could end after `untilMs`.
   */
  async lookups(a: {
    items: { index: number; key: RoutingKey }[]
    timeoutMs: number
    untilMs: number
  }): Promise<{
    results: { ms: number; id?: string }[]
    loopP99Ms: number
  }> {
    loop.reset()
    const results: { ms: number; id?: string }[] = []
    for (const { index, key } of a.items) {
      if (now() + a.timeoutMs > a.untilMs) break // the phase's budget: what is measured by then is the sample
      const r = nodes.get(index)
      results.push(r === undefined ? { ms: NaN } : await firstPeer(r, key, a.timeoutMs))
      await new Promise((r) => setImmediate(r)) // let the nodes' own work run between lookups
    }
    return { results, loopP99Ms: loop.percentile(99) / 1e6 }
  },
  /**
   * Every provider a lookup yields, and whether this node still had a connection to it when it was
   * yielded (the dead-node check: a departed node must never be returned once its connection closed).
   */
  async resolveAll(a: {
    index: number
    key: RoutingKey
    timeoutMs: number
  }): Promise<{ id: string; connected: boolean }[]> {
    const r = nodes.get(a.index)
    if (r === undefined) return []
    const out: { id: string; connected: boolean }[] = []
    for await (const p of r.resolve(a.key, { signal: AbortSignal.timeout(a.timeoutMs) }))
      out.push({ id: p.id, connected: r.isConnected(p.id) })
    return out
  },
  /**
   * When each of `indices` first resolves `key` to `want` (absolute ms; -1: the node left meanwhile),
   * polling every 50 ms until `untilMs`. Only nodes that already held `want`'s list are watched: they learn
   * of the image from a delta; the others (still joining) get it with the snapshot, which is their join time.
   */
  async watch(a: { indices: number[]; key: RoutingKey; want: string; untilMs: number }): Promise<{
    at: (number | null)[]
    skipped: number
    why: string[]
    /** the slowest lookup that did not find it yet, and the exchange's state when it started */
    slowest: string
  }> {
    const holding = a.indices.filter(
      (index) =>
        ((
          nodes.get(index) as unknown as { exchange?: { keyCount(p: string): number } } | undefined
        )?.exchange?.keyCount(a.want) ?? 0) > 0,
    )
    const seen: (number | null)[] = holding.map(() => null)
    // each node polls on its own: one slow lookup delays only its own node's answer (the first version
    // polled in rounds, and one lookup that ran for seconds failed the whole probe)
    let slowestMs = 0
    let slowest = ''
    await Promise.all(
      holding.map(async (index, i) => {
        while (seen[i] === null && now() < a.untilMs) {
          const r = nodes.get(index)
          if (r === undefined) return
          // what `resolve` yields first, without its DHT fallback: polling lookups that went to the DHT whenever
          // a view was incomplete (a node joining or leaving) were a DHT storm of ~170 queries/s per process
          // that starved the very event loop being measured (lookups of 250 ms ran 9-108 s at 100 nodes); in a
          // full view nobody provides on the DHT, so that path cannot find a new image anyway
          const t0 = performance.now()
          if (resolvableFromMemory(r, a.key, a.want)) seen[i] = now()
          const ms = performance.now() - t0
          if (ms > slowestMs) {
            slowestMs = ms
            slowest = `${ms.toFixed(1)} ms`
          }
          await sleep(50)
        }
      }),
    )
    // why a node did not resolve it: which of the steps between the delta and a yielded provider failed
    const why: string[] = []
    holding.forEach((index, i) => {
      const r = nodes.get(index)
      if (seen[i] !== null || r === undefined) return
      why.push(diagnose(r, a.key, a.want))
    })
    return {
      at: holding.map((index, i) => (nodes.has(index) ? seen[i]! : -1)),
      skipped: a.indices.length - holding.length,
      why,
      slowest,
    }
  },
  /** The publisher's side of a probe that timed out (bench only: reads private fields). */
  published(a: { index: number; key: RoutingKey }): string {
    const r = nodes.get(a.index) as unknown as
      | {
          advertised: Map<string, unknown>
          exchange: {
            sent: Map<string, number>
            subscribers: Map<string, unknown>
            timer?: unknown
            keysDirty: boolean
            stopped: boolean
          }
        }
      | undefined
    if (r === undefined) return 'gone'
    const k = keyToString(a.key)
    const x = r.exchange
    return `advertised=${r.advertised.has(k)} sent=${x.sent.has(k)} subscribers=${x.subscribers.size} timer=${x.timer !== undefined} dirty=${x.keysDirty} stopped=${x.stopped}`
  },
  /**
   * DHT operations one at a time from one node, straight on kad-dht (the model's DHT cost): a provide, a
   * full walk for a key nobody has, or a find that stops at the first provider as `resolve` does. Each
   * counts the peers that answered (`queried`) and the requests that failed.
   */
  async calibrate(a: {
    index: number
    kind: 'provide' | 'walk' | 'find'
    seeds: string[]
    timeoutMs?: number
  }): Promise<DhtOp[]> {
    const dht = dhtOf(node(a.index))
    const out: DhtOp[] = []
    for (const seed of a.seeds) {
      const cid = await keyToCid(digestKey(digestOf(seed)))
      const t = performance.now()
      const op: DhtOp = { ms: 0, queried: 0, errors: 0 }
      const signal = AbortSignal.timeout(a.timeoutMs ?? 10_000)
      try {
        for await (const e of a.kind === 'provide'
          ? dht.provide(cid, { signal })
          : dht.findProviders(cid, { signal })) {
          if (e.name === 'PEER_RESPONSE') op.queried++
          else if (e.name === 'QUERY_ERROR') op.errors++
          else if (a.kind === 'find' && e.name === 'PROVIDER' && e.providers.length > 0) {
            op.firstProviderMs = performance.now() - t
            break
          }
        }
      } catch (err) {
        op.failed = (err as Error).message
      }
      op.ms = performance.now() - t
      out.push(op)
    }
    return out
  },
  async shutdown(): Promise<void> {
    await Promise.all([...nodes.values()].map((r) => r.stop().catch(() => undefined)))
    nodes.clear()
  },
}

export type Ops = typeof ops

// kad-dht 16 can throw an AbortError from a query's abort listener after the query ended: not a result
process.on('uncaughtException', (err) => {
  if (err.name !== 'AbortError') throw err
})
process.on('message', (m: { id: number; op: keyof Ops; args: unknown }) => {
  void (async () => {
    try {
      const result = await (ops[m.op] as (a: unknown) => unknown)(m.args)
      process.send!({ id: m.id, result })
    } catch (err) {
      process.send!({ id: m.id, error: (err as Error).message })
    }
  })()
})
// the coordinator gone (crashed, killed): nothing here outlives it
process.on('disconnect', () => process.exit(0))
process.send!({ ready: true })
