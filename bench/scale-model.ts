/**
 * The scale model: per-node routing memory, traffic, lookup latency and time to visibility as formulas of
 * the protocol's message counts, with the constants fitted to the bench/scale.ts runs in bench/results/
 * (scale-<N>[-p<P>].json), checked against every measured point, and extrapolated to 1,000 and 5,000 nodes.
 *
 *   npx tsx bench/scale-model.ts      # reads bench/results/scale-*.json, writes bench/results/scale.md
 *
 * Workload of the modelled rows (the issue's): K = 3,000 keys per node, one image pull per node per minute
 * adding d = 5 new keys (and deleting as many a few minutes later), each node restarting once a day, the
 * default peer sets: a full view up to P = 256 peers, a sample of S = 64 above.
 */
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { DEFAULT_SAMPLE_PEERS } from '../src/routing/key-exchange.js'
import type { ScaleResult } from './scale.js'

const RESULTS = fileURLToPath(new URL('./results/', import.meta.url))
const KiB = 1024
const MiB = 1024 * 1024

export interface Workload {
  nodes: number
  keys: number
  maxPeers: number
  /** lists held above the full view */
  samplePeers: number
  /** image pulls per node per second, and new keys per pull */
  pullRate: number
  newKeysPerPull: number
  /** node restarts (leave + join) per node per second */
  restartRate: number
  /** keys a node provides on the DHT (held by fewer than popularHolders of its sample); sampled regime only */
  providedKeys: number
  reprovideSeconds: number
}

/** Fitted constants (see fit()). */
export interface Constants {
  /** wire bytes per key in an exchange frame: a 6-byte hash (frame, yamux and noise headers are < 0.1 %) */
  wireBytesPerKey: number
  /** bytes one delta frame costs besides its keys: frame 5 + yamux 12 + noise 16 */
  deltaOverheadBytes: number
  /** libp2p connections per exchange peer (subscriptions both ways share one; simultaneous dials add some) */
  connectionsPerPeer: number
  /**
   * the same in a sampled view, where the peers that hold our list are not all peers whose list we hold, and
   * DHT walks open connections: per list held, over every sampled run (2 without one: no overlap at all)
   */
  sampledConnectionsPerPeer: number
  /** idle routing traffic received per node per second = base + per connection (pings, heartbeats, DHT upkeep) */
  idleBytesBase: number
  idleBytesPerConnection: number
  /** heap per node = base + per connection + exchange state (libp2p's per-connection buffers, peer store) */
  heapBase: number
  heapPerConnection: number
  /**
   * bytes a node's join costs per exchange peer, received cluster-wide (connection setup: PSK, noise, identify,
   * DHT table; both snapshots): fitted from the churn traffic the other terms do not explain
   */
  joinBytesPerPeer: number
  /** CPU one node spends joining, per exchange peer (handshakes, identify, snapshots both ways) */
  joinCpuSecondsPerPeer: number
  /** a DHT provide / lookup: bytes cluster-wide = a + b·log2 N; time ms = a + b·log2 N */
  provideBytes: [number, number]
  lookupBytes: [number, number]
  provideMs: [number, number]
  lookupMs: [number, number]
  /** a lookup answered from the exchange (full view), p99 ms: hits, and misses */
  localHitP99Ms: number
  localMissP99Ms: number
  /**
   * delta delivery to every subscriber, p99 s: measured at rest where a run did (visibility.quiet), as a node
   * with its own CPU meets it; runs before session 15 only measured it under churn, on a saturated machine
   */
  deltaVisibilityP99S: number
}

/** kad-dht's self-walk and table refresh interval (QUERY_SELF_INTERVAL, TABLE_REFRESH_INTERVAL) */
const DHT_REFRESH_SECONDS = 300

const sampled = (w: Workload): boolean => w.nodes - 1 > w.maxPeers
const view = (w: Workload): number => (sampled(w) ? w.samplePeers : w.nodes - 1)
const lin = ([a, b]: [number, number], n: number): number => a + b * Math.log2(n)

/**
 * Exchange state a node holds (what KeyExchange.stats().stateBytes counts): 8-byte key hashes per peer,
 * per-subscription bookkeeping, each peer's member list (V entries of ~60 B), subscribers, its own keys, and
 * DHT provider records stored for others (k = 20 replicas of every provided key, ~350 B each).
 */
export function routingStateBytes(w: Workload): number {
  const v = view(w)
  const records = sampled(w) ? 20 * w.providedKeys : 0
  return v * w.keys * 8 + v * 400 + v * v * 60 + v * 1.25 * 400 + w.keys * 120 + records * 350
}

export interface Modelled {
  stateMiB: number
  heapMiB: number
  trafficKiBs: number
  hitP99Ms: number
  missP99Ms: number
  visibilityS: number
  joinCpuSeconds: number
}

export function model(w: Workload, c: Constants): Modelled {
  const v = view(w)
  const connections = v * (sampled(w) ? c.sampledConnectionsPerPeer : c.connectionsPerPeer)
  // received from V publishers: each pull's keys as an add, later a delete
  const deltas = w.pullRate * 2 * (w.newKeysPerPull * c.wireBytesPerKey + c.deltaOverheadBytes) * v
  // a restart: V connections set up and V snapshots each way (fitted per peer, cluster-wide)
  const joins = w.restartRate * v * c.joinBytesPerPeer
  const idle = c.idleBytesBase + c.idleBytesPerConnection * connections
  // kad-dht's upkeep, in either view: every 5 min a self-walk and a walk per common-prefix length of its table
  // (~log2 N + 1); a 15-s idle window of a run catches it only by chance, so it is a term of its own
  const upkeep = ((Math.log2(w.nodes) + 2) * lin(c.lookupBytes, w.nodes)) / DHT_REFRESH_SECONDS
  let dht = 0
  if (sampled(w)) {
    const provide = lin(c.provideBytes, w.nodes)
    // cluster-wide bytes of this node's provides = what an average node receives for them: new keys at once,
    // provided keys every reprovide interval, about one DHT lookup per pull (content outside the sample)
    dht =
      w.pullRate * w.newKeysPerPull * provide +
      (w.providedKeys * provide) / w.reprovideSeconds +
      w.pullRate * lin(c.lookupBytes, w.nodes)
  }
  const state = routingStateBytes(w)
  const walk = lin(c.lookupMs, w.nodes)
  return {
    stateMiB: state / MiB,
    heapMiB: (c.heapBase + c.heapPerConnection * connections + state) / MiB,
    trafficKiBs: (idle + deltas + joins + upkeep + dht) / KiB,
    // full view: from memory; sampled: content on ≥ 1 of V sampled peers is local, the rest a DHT walk
    hitP99Ms: sampled(w) ? walk : c.localHitP99Ms,
    missP99Ms: sampled(w) ? walk : c.localMissP99Ms,
    visibilityS: sampled(w)
      ? Math.max(c.deltaVisibilityP99S, (lin(c.provideMs, w.nodes) + walk) / 1000)
      : c.deltaVisibilityP99S,
    joinCpuSeconds: c.joinCpuSecondsPerPeer * v,
  }
}

/** Least squares y = b·x (through the origin: a walk's hops and bytes grow with log2 N, idle bytes with connections). */
function fitProportional(points: [number, number][]): [number, number] {
  const sxx = points.reduce((s, [x]) => s + x * x, 0)
  const sxy = points.reduce((s, [x, y]) => s + x * y, 0)
  return [0, sxy / (sxx || 1)]
}

/** Least squares y = a + b·x. */
function fitLine(points: [number, number][]): [number, number] {
  if (points.length === 1) return [points[0]![1], 0]
  const n = points.length
  const sx = points.reduce((s, [x]) => s + x, 0)
  const sy = points.reduce((s, [, y]) => s + y, 0)
  const sxx = points.reduce((s, [x]) => s + x * x, 0)
  const sxy = points.reduce((s, [x, y]) => s + x * y, 0)
  const b = (n * sxy - sx * sy) / (n * sxx - sx * sx || 1)
  return [(sy - b * sx) / n, b]
}

const benchWorkload = (r: ScaleResult): Workload => ({
  nodes: r.nodes,
  keys: r.keysPerNode,
  maxPeers: r.maxPeers,
  samplePeers: Math.min(r.maxPeers, DEFAULT_SAMPLE_PEERS),
  pullRate: r.traffic.pulls / r.nodes / r.churnSeconds,
  newKeysPerPull: 5,
  restartRate: r.traffic.replaced / r.nodes / r.churnSeconds,
  providedKeys: r.memory.providerRecordsPerNode / 20,
  reprovideSeconds: 900,
})

/** Fits on the runs that settled (a run that did not is shown, not fitted). */
export function fit(all: ScaleResult[]): Constants {
  const runs = all.filter((r) => r.settled)
  const log = (r: ScaleResult): number => Math.log2(r.nodes)
  const v = (r: ScaleResult): number => view(benchWorkload(r))
  const mean = (xs: number[]): number => xs.reduce((a, x) => a + x, 0) / xs.length
  // idle upkeep per connection: only runs with the daemon's ping and heartbeat intervals
  const idle = fitProportional(
    runs
      .filter((r) => r.relaxedUpkeep === undefined)
      .map((r) => [r.memory.connectionsPerNode, r.traffic.idleBytesPerNodePerSecond]),
  )
  const heap = fitLine(
    runs.map((r) => [
      r.memory.connectionsPerNode,
      r.memory.heapPerNodeMiB * MiB - routingStateBytes(benchWorkload(r)),
    ]),
  )
  const full = runs.filter((r) => r.nodes - 1 <= r.maxPeers)
  const connectionsPerPeer = mean(full.map((r) => r.memory.connectionsPerNode / v(r)))
  // sampled runs, settled or not: connections per list actually held (subscribers and DHT peers included)
  const sampledRuns = all.filter((r) => r.nodes - 1 > r.maxPeers)
  const sampledConnectionsPerPeer =
    sampledRuns.length > 0
      ? mean(sampledRuns.map((r) => r.memory.connectionsPerNode / (r.memory.heldKeysPerNode / r.keysPerNode)))
      : 2
  // churn traffic minus idle and deltas, per join per peer
  const joinBytesPerPeer = mean(
    runs.map((r) => {
      const w = benchWorkload(r)
      const deltas = w.pullRate * 2 * (w.newKeysPerPull * 6 + 33) * v(r)
      const rest = r.traffic.churnBytesPerNodePerSecond - r.traffic.idleBytesPerNodePerSecond - deltas
      return Math.max(0, rest) / (w.restartRate * v(r))
    }),
  )
  const max = (xs: number[]): number => Math.max(...xs.filter(Number.isFinite))
  return {
    wireBytesPerKey: 6,
    deltaOverheadBytes: 33,
    connectionsPerPeer,
    sampledConnectionsPerPeer,
    joinBytesPerPeer,
    idleBytesBase: Math.max(0, idle[0]),
    idleBytesPerConnection: idle[1],
    heapBase: heap[0],
    heapPerConnection: heap[1],
    joinCpuSecondsPerPeer: mean(runs.map((r) => r.settleCpuSecondsPerNode / v(r))),
    provideBytes: fitProportional(runs.map((r) => [log(r), r.dht.bytesPerProvide])),
    lookupBytes: fitProportional(runs.map((r) => [log(r), r.dht.bytesPerLookup])),
    provideMs: fitProportional(runs.map((r) => [log(r), r.dht.provideMs.p99])),
    lookupMs: fitProportional(runs.map((r) => [log(r), r.dht.lookupMs.p99])),
    localHitP99Ms: max(full.map((r) => r.lookup.hit.p99)),
    localMissP99Ms: max(full.map((r) => r.lookup.miss.p99)),
    // a real node spends ~1 % of a core on this churn (the 200-node run: 2 cores busy for 200 nodes), so its
    // deltas do not queue behind 99 other nodes' as they do here: the figure at rest, once measured
    deltaVisibilityP99S: full.some((r) => r.visibility.quiet !== undefined)
      ? max(full.map((r) => r.visibility.quiet?.seconds.p99 ?? NaN))
      : max(full.map((r) => r.visibility.seconds.p99)),
  }
}

const f = (n: number | null | undefined, d = 1): string =>
  n !== null && n !== undefined && Number.isFinite(n) ? n.toFixed(d) : 'n/a'

/**
 * The router's default re-provide interval (KadDhtRouter.reprovideEveryMs): 15 min while the view is full;
 * in a sampled view 15 min × nodes / (P + 1), up to 4×, at most 80 % of the 75-min record validity.
 */
export function defaultReprovideSeconds(nodes: number, maxPeers = 256): number {
  if (nodes - 1 <= maxPeers) return 900
  return Math.max(900, Math.min(900 * Math.min(4, nodes / (maxPeers + 1)), 0.8 * 4500))
}

export const production = (
  nodes: number,
  samplePeers = DEFAULT_SAMPLE_PEERS,
  reprovideSeconds = defaultReprovideSeconds(nodes),
  maxPeers = 256,
): Workload => ({
  nodes,
  keys: 3000,
  maxPeers,
  samplePeers,
  pullRate: 1 / 60,
  newKeysPerPull: 5,
  restartRate: 1 / 86_400,
  // a node's own rare content: its last ~60 images' new keys (older ones spread to many nodes)
  providedKeys: 300,
  reprovideSeconds,
})

/**
 * Results before session 15 counted every wire byte twice (scale-worker.ts counted the PSK layer's decrypted
 * copy too; the chunks came in identical pairs): their wire-byte figures are halved here. The exchange's
 * own byte counts (`churnExchangeBytesPerNodePerSecond`) were never doubled.
 */
export function countedOnce(r: ScaleResult): ScaleResult {
  if (r.wireBytesCountedOnce === true) return r
  return {
    ...r,
    traffic: {
      ...r.traffic,
      idleBytesPerNodePerSecond: r.traffic.idleBytesPerNodePerSecond / 2,
      churnBytesPerNodePerSecond: r.traffic.churnBytesPerNodePerSecond / 2,
    },
    dht: { ...r.dht, bytesPerProvide: r.dht.bytesPerProvide / 2, bytesPerLookup: r.dht.bytesPerLookup / 2 },
  }
}

export async function render(): Promise<string> {
  const files = (await readdir(RESULTS)).filter((n) => /^scale-\d+(-p\d+)?\.json$/.test(n))
  const runs: ScaleResult[] = []
  for (const name of files)
    runs.push(countedOnce(JSON.parse(await readFile(`${RESULTS}${name}`, 'utf8')) as ScaleResult))
  runs.sort((a, b) => a.nodes - b.nodes || b.maxPeers - a.maxPeers)
  const c = fit(runs)
  const lines: string[] = [
    '## Fit check: the model with the bench workload vs what was measured',
    '',
    '| nodes | peer set | settled | routing state MiB/node (model / measured) | heap MiB/node (model / measured) | traffic KiB/s/node under churn (model / measured) | join CPU-s/node (model / measured) |',
    '|---|---|---|---|---|---|---|',
  ]
  for (const r of runs) {
    const m = model(benchWorkload(r), c)
    lines.push(
      `| ${r.nodes} | ${view(benchWorkload(r))} | ${r.settled ? 'yes' : `no (${f(r.settleSeconds, 0)} s)`} | ${f(m.stateMiB, 2)} / ${f(r.memory.routingStatePerNodeMiB, 2)} | ${f(m.heapMiB)} / ${f(r.memory.heapPerNodeMiB)} | ${f(m.trafficKiBs)} / ${f(r.traffic.churnBytesPerNodePerSecond / KiB)} | ${f(m.joinCpuSeconds, 2)} / ${f(r.settleCpuSecondsPerNode, 2)} |`,
    )
  }
  lines.push(
    '',
    '## The table (issue #17)',
    '',
    'Measured rows: the bench workload (below). Modelled rows: K = 3,000 keys per node, one image pull per node per',
    'minute (5 new keys, deleted later), one restart per node per day; a full view up to 257 nodes, above it the',
    `default sample of S = ${DEFAULT_SAMPLE_PEERS} peers (256 before this change: the row marked so).`,
    '',
    '| nodes | how | routing memory per node | routing traffic per node | lookup p99 hit / miss | cluster-wide visibility p99 | dead node returned after its connection closed |',
    '|---|---|---|---|---|---|---|',
  )
  for (const r of runs) {
    lines.push(
      `| ${r.nodes} | measured${r.maxPeers < r.nodes - 1 ? ` (sampled: S = ${view(benchWorkload(r))})` : ' (full view)'}${r.settled ? '' : ', **did not settle**'} | ${f(r.memory.routingStatePerNodeMiB, 2)} MiB state, ${f(r.memory.heapPerNodeMiB)} MiB heap incl. libp2p (${f(r.memory.connectionsPerNode, 0)} connections) | ${f(r.traffic.churnBytesPerNodePerSecond / KiB)} KiB/s under churn (idle ${f(r.traffic.idleBytesPerNodePerSecond / KiB)}) | ${f(r.lookup.hit.p99, 2)} / ${f(r.lookup.miss.p99, 2)} ms (n = ${r.lookup.hit.n}/${r.lookup.miss.n}; hits not found ${r.lookup.hitNotFound}) | ${f(r.visibility.seconds.p99, 2)} s under churn (n = ${r.visibility.seconds.n}; ${r.visibility.incomplete} not within 15 s${r.traffic.churnCpuCores !== undefined ? `; ${f(r.traffic.churnCpuCores, 2)} of 2 cores busy` : ''})${r.visibility.quiet !== undefined ? `; ${f(r.visibility.quiet.seconds.p99, 2)} s at rest (n = ${r.visibility.quiet.seconds.n}; ${r.visibility.quiet.incomplete} not within 15 s)` : ''} | ${r.deadReturned} of ${r.lookupsChecked} (${r.deadReturnedWhileConnected ?? 'n/a'} before the close was seen) |`,
    )
  }
  const S = DEFAULT_SAMPLE_PEERS
  const rows: [number, number, number, string][] = [
    [200, S, defaultReprovideSeconds(200), ''],
    [1000, S, defaultReprovideSeconds(1000), ''],
    [5000, S, defaultReprovideSeconds(5000), ''],
    [5000, 256, defaultReprovideSeconds(5000), ', a sample of 256: the old default'],
    [5000, S, 900, ', re-provides every 15 min: the old default'],
  ]
  for (const [n, sample, reprovide, given] of rows) {
    const w = production(n, sample, reprovide)
    const note = given !== '' ? given : `, re-provides every ${f(reprovide / 60, 0)} min by default`
    const m = model(w, c)
    lines.push(
      `| ${n} | modelled${sampled(w) ? ` (sampled: S = ${sample}${note})` : ' (full view)'} | ${f(m.stateMiB, 1)} MiB state, ${f(m.heapMiB)} MiB heap incl. libp2p | ${f(m.trafficKiBs)} KiB/s | ${f(m.hitP99Ms, 2)} / ${f(m.missP99Ms, 2)} ms${sampled(w) ? ` (a DHT walk; content on one of the ${sample} sampled peers: local; the mirror answers a miss at its 20 ms resolve timeout)` : ''} | ${f(m.visibilityS, 2)} s | 0 (a list is dropped when its connection closes) |`,
    )
  }
  lines.push('', '## Fitted constants', '', '```json', JSON.stringify(c, null, 2), '```', '')
  return lines.join('\n')
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const table = await render()
  const md = `${RESULTS}scale.md`
  const text = await readFile(md, 'utf8')
  const mark = '<!-- generated by bench/scale-model.ts -->'
  const head = text.includes(mark) ? text.slice(0, text.indexOf(mark)) : `${text}\n`
  await writeFile(md, `${head}${mark}\n\n${table}`)
  console.log(table)
}
