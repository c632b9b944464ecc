/**
 * Scale: N real `KadDhtRouter`s (libp2p, kad-dht, the real key exchange; noise + yamux over libp2p's
 * in-memory transport so hundreds of nodes fit in one process without file descriptors) with realistic key
 * sets — ~3,000 keys a node, most of them base layers every node holds — and churn: image pulls, deletes,
 * nodes leaving and joining. Measures per node: routing memory, routing bytes/s, lookup latency for hits
 * and misses, time until a new image resolves from every node, and whether a lookup ever returns a node
 * that has left. Bounded: every phase has a fixed length or a deadline, and the run ends by itself.
 *
 *   npx tsx --expose-gc bench/scale.ts 50 100 200          # writes bench/results/scale-<N>.json
 *   MAX_PEERS=32 npx tsx --expose-gc bench/scale.ts 200    # the sampled regime (peer set < cluster)
 *
 * Everything runs in this process: latencies include the other nodes' work on the same two cores, so
 * they are upper bounds for a real cluster where each node has its own CPU.
 */
import { writeFile } from 'node:fs/promises'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import type { Libp2p } from '@libp2p/interface'
import type { KadDHT } from '@libp2p/kad-dht'
import { memory } from '@libp2p/memory'
// the one place every libp2p connection's received bytes pass (encrypted, muxed: the real wire bytes);
// a transitive dependency of libp2p, imported here only to count
import { AbstractMultiaddrConnection } from '@libp2p/utils'
import pino from 'pino'
import { digestOf } from '../src/oci/index.js'
import { KadDhtRouter, type RoutingStats } from '../src/routing/kad-dht.js'
import { digestKey, keyToCid, type RoutingKey } from '../src/routing/keys.js'
import { log, stats, type Stats } from './lib.js'

const RESULTS = fileURLToPath(new URL('./results/', import.meta.url))

export interface ScaleInit {
  nodes: number
  /** Base-layer pool every node draws from (default 2,500, each held with probability 0.9). */
  commonKeys?: number
  /** Less common keys: a pool of 20,000, 700 per node. */
  rarePool?: number
  rarePerNode?: number
  /** Key-exchange peer set (default: the router's, 256). */
  maxPeers?: number
  churnSeconds?: number
  /** Image pulls per node per minute during churn (default 1). */
  pullsPerNodePerMinute?: number
  /** One node leaves and a new one joins this often during churn (default 15 s). */
  replaceEverySeconds?: number
  samples?: number
  seed?: number
}

export interface ScaleResult {
  nodes: number
  maxPeers: number
  keysPerNode: number
  distinctKeys: number
  settleSeconds: number
  /** every node's exchange was a full view (or, when sampled, full) at the end of settling */
  settled: boolean
  churnSeconds: number
  /** this process's event-loop delay p99 during the run (ms): every latency below includes it */
  eventLoopDelayP99Ms: number
  memory: {
    /** (heap + array buffers) growth per node after settling, everything a router holds incl. libp2p */
    heapPerNodeMiB: number
    /** what the routing layer itself holds: key lists + provider records (estimate from counts) */
    routingStatePerNodeMiB: number
    heldKeysPerNode: number
    providerRecordsPerNode: number
    connectionsPerNode: number
  }
  traffic: {
    /** routing bytes per node per second while idle (DHT upkeep, pings) */
    idleBytesPerNodePerSecond: number
    /** ... during churn: pulls, deletes, joins and leaves */
    churnBytesPerNodePerSecond: number
    /** of which key-exchange payload */
    churnExchangeBytesPerNodePerSecond: number
    pulls: number
    deletes: number
    replaced: number
  }
  lookup: { hit: Stats; hitNotFound: number; miss: Stats }
  visibility: { seconds: Stats; incomplete: number }
  deadReturned: number
  lookupsChecked: number
  dht: {
    /** one provide measured alone: bytes cluster-wide, and its time */
    bytesPerProvide: number
    provideMs: Stats
    /** one DHT lookup for a key nobody provides (a full walk) */
    bytesPerLookup: number
    lookupMs: Stats
  }
}

// ---- workload -------------------------------------------------------------------------------------------

function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const common = (i: number): RoutingKey => digestKey(digestOf(`scale-common-${i}`))
const rare = (i: number): RoutingKey => digestKey(digestOf(`scale-rare-${i}`))
const tag = (name: string): RoutingKey => ({
  kind: 'tag',
  registry: 'registry.example.com',
  repository: `team/${name}`,
  tag: 'v1',
})

/** A node's initial keys: ~90 % of the common pool, some rare keys, a few tags. */
function nodeKeys(init: Required<ScaleInit>, index: number): { keys: RoutingKey[]; rare: number[] } {
  const r = rng(init.seed * 7919 + index)
  const keys: RoutingKey[] = []
  for (let i = 0; i < 30; i++) keys.push(tag(`app-${Math.floor(r() * 200)}`))
  for (let i = 0; i < init.commonKeys; i++) if (r() < 0.9) keys.push(common(i))
  const rareIds: number[] = []
  for (let i = 0; i < init.rarePerNode; i++) rareIds.push(Math.floor(r() * init.rarePool))
  for (const i of rareIds) keys.push(rare(i))
  return { keys, rare: rareIds }
}

// ---- measurement helpers ---------------------------------------------------------------------------------

let wireBytes = 0
function countWireBytes(): void {
  const proto = AbstractMultiaddrConnection.prototype as unknown as {
    onData(data: { byteLength: number }): void
  }
  const onData = proto.onData
  proto.onData = function (this: unknown, data: { byteLength: number }) {
    wireBytes += data.byteLength
    return onData.call(this, data)
  }
}

function heapBytes(): number {
  ;(globalThis as { gc?: () => void }).gc?.()
  const m = process.memoryUsage()
  return m.heapUsed + m.arrayBuffers
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

interface Node {
  index: number
  router: KadDhtRouter
  keys: RoutingKey[]
  rare: number[]
  url: string
  alive: boolean
  /** images pulled during churn: their unique keys */
  images: RoutingKey[][]
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

// ---- the run ---------------------------------------------------------------------------------------------

export async function benchScale(options: ScaleInit): Promise<ScaleResult> {
  const init: Required<ScaleInit> = {
    commonKeys: 2500,
    rarePool: 20_000,
    rarePerNode: 700,
    maxPeers: 256,
    churnSeconds: 60,
    pullsPerNodePerMinute: 1,
    replaceEverySeconds: 15,
    samples: 400,
    seed: 1,
    ...(Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as ScaleInit),
  }
  const N = init.nodes
  const r = rng(init.seed)
  const logger = pino({ level: process.env.KAGAMI_BENCH_LOG ?? 'silent' })
  const run = `${process.pid}-${Date.now()}`
  const nodes: Node[] = []
  const dead = new Set<string>()
  let nextIndex = 0
  let bootstrap: string[] = []

  const startNode = async (): Promise<Node> => {
    const index = nextIndex++
    const url = `http://10.${(index >> 16) & 255}.${(index >> 8) & 255}.${index & 255}:30021`
    const router = new KadDhtRouter(
      { logger },
      {
        listen: [`/memory/scale-${run}-${index}`],
        peerUrl: url,
        bootstrap,
        transports: [memory()],
        // memory connections have no IP to match the announced URL against (the trust check needs one)
        checkPeerUrl: (url) => url,
        keyExchangeInit: {
          maxPeers: init.maxPeers,
          maxSubscribers: Math.ceil(init.maxPeers * 1.25),
          // hundreds of nodes share this process's one event loop on a 2-core machine other jobs share
          // too: its lag reaches seconds, and a subscriber that has not drained for 10 s is not stuck here
          sendTimeoutMs: 120_000,
          snapshotTimeoutMs: 300_000,
        },
      },
    )
    await router.start()
    const { keys, rare: rareIds } = nodeKeys(init, index)
    const node: Node = { index, router, keys, rare: rareIds, url, alive: true, images: [] }
    nodes.push(node)
    return node
  }
  const live = (): Node[] => nodes.filter((n) => n.alive)
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]!
  const statsOf = (): RoutingStats[] => live().map((n) => n.router.routingStats())
  const deadline = Date.now() + 30 * 60_000 // the whole run, whatever happens

  let churnSecondsMeasured = 0
  countWireBytes()
  const loop = monitorEventLoopDelay({ resolution: 20 })
  loop.enable()
  const m0 = heapBytes()
  try {
    // -- start: three bootstrap nodes (a headless Service), then the rest in batches
    const t0 = performance.now()
    for (let i = 0; i < Math.min(3, N); i++) await startNode()
    bootstrap = nodes.flatMap((n) => n.router.multiaddrs().map(String))
    while (nodes.length < N) {
      await Promise.all(Array.from({ length: Math.min(10, N - nodes.length) }, () => startNode()))
    }
    log(`scale ${N}: ${N} nodes started in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    for (const n of nodes) await n.router.advertise(n.keys)
    const keysPerNode = nodes.reduce((a, n) => a + n.keys.length, 0) / N
    const distinct = new Set(nodes.flatMap((n) => n.keys.map((k) => JSON.stringify(k)))).size

    // -- settle: every node holds the lists of min(N - 1, maxPeers) peers
    const want = Math.min(N - 1, init.maxPeers)
    let settled = false
    const settleDeadline = Date.now() + 600_000
    while (Date.now() < settleDeadline) {
      const s = statsOf()
      const ready = s.filter((x) => (x.exchange?.peers ?? 0) >= want * (N - 1 > init.maxPeers ? 0.9 : 1))
      const complete = s.filter((x) => x.exchange?.complete === true).length
      if (ready.length === s.length && (N - 1 > init.maxPeers || complete === s.length)) {
        settled = true
        break
      }
      const violations = s.reduce((a, x) => a + (x.exchange?.violations ?? 0), 0)
      log(
        `scale ${N}: settling: ${ready.length}/${s.length} hold ${want} lists, ${complete} complete, ${violations} violations, ` +
          `lists ${s.map((x) => x.exchange?.peers ?? 0).join(',')} conns ${s.reduce((a, x) => a + x.connections, 0) / s.length} ` +
          `${s.find((x) => x.exchange?.incomplete !== undefined)?.exchange?.incomplete ?? ''}`,
      )
      await sleep(3000)
    }
    const settleSeconds = (performance.now() - t0) / 1000
    log(`scale ${N}: settled=${settled} after ${settleSeconds.toFixed(1)} s`)
    await sleep(3000)
    const m1 = heapBytes()
    const settledStats = statsOf()
    const sum = (f: (s: RoutingStats) => number): number => settledStats.reduce((a, s) => a + f(s), 0)
    const memory = {
      heapPerNodeMiB: (m1 - m0) / N / 2 ** 20,
      routingStatePerNodeMiB:
        (sum((s) => s.exchange?.stateBytes ?? 0) + sum((s) => s.providerRecords) * 350) / N / 2 ** 20,
      heldKeysPerNode: sum((s) => s.exchange?.heldKeys ?? 0) / N,
      providerRecordsPerNode: sum((s) => s.providerRecords) / N,
      connectionsPerNode: sum((s) => s.connections) / N,
    }
    log(`scale ${N}: memory ${JSON.stringify(memory)}`)

    // -- idle traffic
    let w0 = wireBytes
    await sleep(20_000)
    const idleBytesPerNodePerSecond = (wireBytes - w0) / N / 20

    // -- churn: pulls, deletes, leave + join; visibility probes; every lookup checked for dead nodes
    let pulls = 0
    let deletes = 0
    let replaced = 0
    let lookupsChecked = 0
    let deadReturned = 0
    const visibility: number[] = []
    let visibilityIncomplete = 0
    const probes: Promise<void>[] = []
    const exchangeBytes = (): number =>
      statsOf().reduce((a, s) => a + (s.exchange?.bytesSent ?? 0), 0) + deadExchangeBytes
    let deadExchangeBytes = 0
    const x0 = exchangeBytes()
    w0 = wireBytes
    const churnStart = performance.now()
    let lastReplace = churnStart
    let lastProbe = churnStart
    let pullCredit = 0
    let deleteCredit = 0
    let tick = performance.now()
    const checks = new Set<Promise<void>>()
    while (performance.now() - churnStart < init.churnSeconds * 1000 && Date.now() < deadline) {
      await sleep(250)
      const alive = live()
      // credit by elapsed time: a slow iteration on a busy machine does not lower the pull rate
      const dt = (performance.now() - tick) / 1000
      tick = performance.now()
      pullCredit += (alive.length * init.pullsPerNodePerMinute * dt) / 60
      deleteCredit += (alive.length * init.pullsPerNodePerMinute * dt) / 180
      for (; pullCredit >= 1; pullCredit--) {
        const n = pick(alive)
        const id = `${run}-${pulls++}`
        const image = [
          tag(`churn-${id}`),
          ...[0, 1, 2, 3].map((j) => digestKey(digestOf(`scale-churn-${id}-${j}`))),
        ]
        n.images.push(image)
        const t = performance.now()
        await n.router.advertise([...image, common(Math.floor(r() * init.commonKeys))])
        if (t - lastProbe >= 5000) {
          // how long until every other live node resolves the new tag to its puller
          lastProbe = t
          const key = image[0]!
          probes.push(
            (async () => {
              const pending = new Set(live().filter((m) => m !== n))
              const until = Date.now() + 15_000
              while (pending.size > 0 && Date.now() < until) {
                await Promise.all(
                  [...pending].map(async (m) => {
                    if (!m.alive) return pending.delete(m)
                    const found = await firstPeer(m.router, key, 500)
                    if (found.id === n.router.peerId) pending.delete(m)
                  }),
                )
                if (pending.size > 0) await sleep(100)
              }
              if (pending.size > 0) visibilityIncomplete++
              else visibility.push((performance.now() - t) / 1000)
            })(),
          )
        }
      }
      for (; deleteCredit >= 1; deleteCredit--) {
        const n = pick(alive.filter((m) => m.images.length > 0).concat(alive))
        const image = n.images.shift()
        if (image === undefined) continue
        await n.router.withdraw(image)
        deletes++
      }
      // lookups of random keys from random nodes, in the background (≤ 32 at a time): none may return a
      // node that has left
      for (let i = 0; i < 8 && checks.size < 32; i++) {
        const n = pick(alive)
        const key = r() < 0.5 ? common(Math.floor(r() * init.commonKeys)) : rare(pick(pick(alive).rare))
        const check = (async () => {
          for await (const p of n.router.resolve(key, { signal: AbortSignal.timeout(500) })) {
            lookupsChecked++
            if (dead.has(p.id)) deadReturned++
          }
        })()
        checks.add(check)
        void check.finally(() => checks.delete(check))
      }
      if (performance.now() - lastReplace >= init.replaceEverySeconds * 1000 && alive.length > 4) {
        lastReplace = performance.now()
        const leaving = pick(alive.slice(3))
        leaving.alive = false
        deadExchangeBytes += leaving.router.routingStats().exchange?.bytesSent ?? 0
        await leaving.router.stop()
        dead.add(leaving.router.peerId ?? '')
        const joined = await startNode()
        await joined.router.advertise(joined.keys)
        replaced++
      }
    }
    const churnSeconds = (performance.now() - churnStart) / 1000
    churnSecondsMeasured = churnSeconds
    await Promise.all(checks)
    const traffic = {
      idleBytesPerNodePerSecond,
      churnBytesPerNodePerSecond: (wireBytes - w0) / N / churnSeconds,
      churnExchangeBytesPerNodePerSecond: (exchangeBytes() - x0) / N / churnSeconds,
      pulls,
      deletes,
      replaced,
    }
    log(`scale ${N}: churn ${JSON.stringify(traffic)}`)
    await Promise.all(probes)
    log(`scale ${N}: visibility ${JSON.stringify(stats(visibility))}, incomplete ${visibilityIncomplete}`)

    // -- lookups, quiet: hits (half common, half rare keys held by another live node) and misses
    await sleep(5000)
    const hit: number[] = []
    const miss: number[] = []
    let hitNotFound = 0
    for (let i = 0; i < init.samples && Date.now() < deadline; i++) {
      const alive = live()
      const from = pick(alive)
      const holder = pick(alive.filter((m) => m !== from))
      const key = i % 2 === 0 ? rare(pick(holder.rare)) : pick(holder.keys)
      const found = await firstPeer(from.router, key, 2000)
      if (found.id === undefined) hitNotFound++
      else hit.push(found.ms)
      if (found.id !== undefined && dead.has(found.id)) deadReturned++
      const t = performance.now()
      for await (const _ of from.router.resolve(digestKey(digestOf(`scale-miss-${run}-${i}`)), {
        signal: AbortSignal.timeout(2000),
      })) {
        // a miss yields nothing; time until the lookup ends
      }
      miss.push(performance.now() - t)
    }
    const lookup = { hit: stats(hit), hitNotFound, miss: stats(miss) }
    log(`scale ${N}: lookup ${JSON.stringify(lookup)}`)

    // -- DHT calibration for the model: one provide / one full lookup at a time, bytes cluster-wide
    const probe = live()[3]!.router
    const dht = dhtOf(probe)
    const provideMs: number[] = []
    const lookupMs: number[] = []
    let w = wireBytes
    for (let i = 0; i < 20; i++) {
      const t = performance.now()
      const cid = await keyToCid(digestKey(digestOf(`scale-calibrate-${run}-${i}`)))
      for await (const _ of dht.provide(cid, { signal: AbortSignal.timeout(10_000) })) {
        // drain
      }
      provideMs.push(performance.now() - t)
    }
    const bytesPerProvide = (wireBytes - w) / 20
    w = wireBytes
    for (let i = 0; i < 20; i++) {
      const t = performance.now()
      const cid = await keyToCid(digestKey(digestOf(`scale-calibrate-miss-${run}-${i}`)))
      for await (const _ of dht.findProviders(cid, { signal: AbortSignal.timeout(10_000) })) {
        // drain
      }
      lookupMs.push(performance.now() - t)
    }
    const bytesPerLookup = (wireBytes - w) / 20
    const dhtCost = {
      bytesPerProvide,
      provideMs: stats(provideMs),
      bytesPerLookup,
      lookupMs: stats(lookupMs),
    }
    log(`scale ${N}: dht ${JSON.stringify(dhtCost)}`)

    return {
      nodes: N,
      maxPeers: init.maxPeers,
      keysPerNode,
      distinctKeys: distinct,
      settleSeconds,
      settled,
      churnSeconds: churnSecondsMeasured,
      eventLoopDelayP99Ms: loop.percentile(99) / 1e6,
      memory,
      traffic,
      lookup,
      visibility: { seconds: stats(visibility), incomplete: visibilityIncomplete },
      deadReturned,
      lookupsChecked,
      dht: dhtCost,
    }
  } finally {
    loop.disable()
    await Promise.all(live().map((n) => n.router.stop().catch(() => undefined)))
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  // kad-dht 16 can throw an AbortError from a query's abort listener after the query ended (seen once in
  // the calibration); count it instead of losing the whole run
  process.on('uncaughtException', (err) => {
    if (err.name !== 'AbortError') throw err
    log(`scale: ignored an AbortError thrown by kad-dht after its query ended`)
  })
  const sizes = process.argv.slice(2).map(Number).filter(Number.isFinite)
  const maxPeers = process.env.MAX_PEERS !== undefined ? Number(process.env.MAX_PEERS) : undefined
  for (const nodes of sizes.length > 0 ? sizes : [50, 100, 200]) {
    const result = await benchScale({
      nodes,
      maxPeers,
      churnSeconds: Number(process.env.CHURN_SECONDS ?? 60),
      // KEYS_SCALE=0.1: a tenth of the keys (lists cost CPU ∝ N² × K in one process; memory and traffic
      // scale linearly in K, see bench/scale-model.ts)
      commonKeys: Math.round(2500 * Number(process.env.KEYS_SCALE ?? 1)),
      rarePool: Math.round(20_000 * Number(process.env.KEYS_SCALE ?? 1)),
      rarePerNode: Math.round(700 * Number(process.env.KEYS_SCALE ?? 1)),
      samples: Number(process.env.SAMPLES ?? 400),
    })
    const scale = process.env.KEYS_SCALE !== undefined ? `-k${process.env.KEYS_SCALE}` : ''
    const name = `scale-${nodes}${maxPeers !== undefined ? `-p${maxPeers}` : ''}${scale}.json`
    await writeFile(`${RESULTS}${name}`, `${JSON.stringify(result, null, 2)}\n`)
    console.log(JSON.stringify(result, null, 2))
  }
  process.exit(0)
}
