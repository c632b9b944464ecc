/**
 * What one DHT walk costs, by walk shape and cluster size: N kagami routers with kad-dht alone (no key
 * exchange, no keys; the scale bench's worker processes), one cluster per shape, side by side in one run.
 * For each: walks for keys nobody has (peers that answered, time), provides, and finds of each provided key
 * from other nodes (found or not, time to the first provider).
 *
 *   flock /tmp/kagami-bench.lock npx tsx bench/dht-walk.ts 100 200      # bench/results/dht-walk.json
 *   DHT_SHAPES=20x10,1x3 ...                                            # disjoint paths x alpha
 *
 * Why: kad-dht's default walk is 20 disjoint paths (one per closest peer) with 10 requests in flight each,
 * and the scale model's DHT traffic rests on what one walk costs. Peers that answered are counted from the
 * walk's own events, so they are exact; bytes are not measured here: the cluster's table upkeep while one
 * walk runs is larger than the walk (the scale bench measures them in a cluster at rest).
 */
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { log, stats, type Stats } from './lib.js'
import { forkWorkers, stopWorkers, type Worker } from './scale.js'
import type { DhtOp, WorkerStats } from './scale-worker.js'
import { rng } from './scale-workload.js'

const RESULTS = fileURLToPath(new URL('./results/', import.meta.url))
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

export interface Shape {
  disjointPaths: number
  alpha: number
}

export interface WalkResult {
  nodes: number
  shape: Shape
  /** seconds until every routing table stopped growing (or the 5-min bound) */
  settleSeconds: number
  routingTable: Stats
  connections: Stats
  /** walks for keys nobody has: time, peers that answered, requests that failed */
  walk: ReturnType<typeof summary>
  /** provides: the walk to the closest peers and the ADD_PROVIDER messages to them */
  provide: ReturnType<typeof summary>
  /** finds of provided keys from other nodes, stopping at the first provider */
  find: { n: number; found: number; firstProviderMs: Stats; queried: Stats }
}

/** Time, peers that answered, and failed requests over operations of one kind. */
function summary(ops: DhtOp[]): { ms: Stats; queried: Stats; errors: number } {
  return {
    ms: stats(ops.map((x) => x.ms)),
    queried: stats(ops.map((x) => x.queried)),
    errors: ops.reduce((a, x) => a + x.errors, 0),
  }
}

async function cluster(N: number, shape: Shape, seed: number): Promise<WalkResult> {
  const workers = forkWorkers(Math.max(2, Math.ceil(N / 50)))
  const r = rng(seed)
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]!
  const run = `${process.pid}-${Date.now()}`
  const pskHex = randomBytes(32).toString('hex') // never printed
  const nodes: { index: number; worker: Worker; addrs: string[] }[] = []
  const all = (): Promise<WorkerStats[]> =>
    Promise.all(workers.map((w) => w.call('stats', { gc: false, resetLoop: false })))
  try {
    await Promise.all(workers.map((w) => w.ready))
    const start = async (): Promise<void> => {
      const index = nodes.length
      const worker = workers[index % workers.length]!
      const bootstrap = nodes.flatMap((n) => n.addrs)
      nodes.push({ index, worker, addrs: [] })
      const started = await worker.call('start', {
        index,
        bootstrap,
        maxPeers: 0,
        workload: { commonKeys: 0, rarePool: 0, rarePerNode: 0, seed },
        pskHex,
        dhtOnly: shape,
      })
      nodes[index]!.addrs = started.addrs
    }
    // as the scale bench joins: three, then 10 a second (a DaemonSet rollout)
    const t0 = performance.now()
    for (let i = 0; i < Math.min(3, N); i++) await start()
    while (nodes.length < N) {
      const t = performance.now()
      await Promise.all(Array.from({ length: Math.min(10, N - nodes.length) }, () => start()))
      await sleep(Math.max(0, 1000 - (performance.now() - t)))
    }
    // warmed: every node walks twice for random keys, as kad-dht's table refresh would over hours (a node
    // holding only its join's self-walk has a sparse table, and every walk would dial new peers)
    await Promise.all(
      workers.map(async (w) => {
        for (const n of nodes.filter((m) => m.worker === w))
          await w.call('calibrate', {
            index: n.index,
            kind: 'walk',
            seeds: [`warm-${run}-${n.index}-1`, `warm-${run}-${n.index}-2`],
          })
      }),
    )
    // settled: the routing tables' total unchanged for 15 s (each node's self-walk and refresh done)
    let last = -1
    let same = 0
    let tables: number[] = []
    let conns: number[] = []
    const t1 = performance.now()
    while (same < 3 && (performance.now() - t1 < 300_000 || tables.length === 0)) {
      await sleep(5000)
      const s = (await all()).flatMap((w) => w.nodes.map((n) => n.stats))
      tables = s.map((x) => x.routingTable)
      conns = s.map((x) => x.connections)
      const total = tables.reduce((a, b) => a + b, 0)
      same = total === last ? same + 1 : 0
      last = total
    }
    const settleSeconds = (performance.now() - t0) / 1000
    log(
      `dht-walk ${N} ${shape.disjointPaths}x${shape.alpha}: settled in ${settleSeconds.toFixed(0)} s, ` +
        `routing table ${JSON.stringify(stats(tables))}`,
    )

    const walks: DhtOp[] = []
    for (let i = 0; i < 20; i++) {
      const n = pick(nodes)
      walks.push(
        ...(await n.worker.call('calibrate', {
          index: n.index,
          kind: 'walk',
          seeds: [`dht-walk-miss-${run}-${i}`],
        })),
      )
    }
    const provides: DhtOp[] = []
    const finds: DhtOp[] = []
    for (let i = 0; i < 10; i++) {
      const key = `dht-walk-provided-${run}-${i}`
      const provider = pick(nodes)
      provides.push(
        ...(await provider.worker.call('calibrate', {
          index: provider.index,
          kind: 'provide',
          seeds: [key],
        })),
      )
      for (let j = 0; j < 5; j++) {
        const finder = pick(nodes.filter((n) => n !== provider))
        finds.push(
          ...(await finder.worker.call('calibrate', { index: finder.index, kind: 'find', seeds: [key] })),
        )
      }
    }
    const found = finds.filter((f) => f.firstProviderMs !== undefined)
    const result: WalkResult = {
      nodes: N,
      shape,
      settleSeconds,
      routingTable: stats(tables),
      connections: stats(conns),
      walk: summary(walks),
      provide: summary(provides),
      find: {
        n: finds.length,
        found: found.length,
        firstProviderMs: stats(found.map((x) => x.firstProviderMs!)),
        queried: stats(finds.map((x) => x.queried)),
      },
    }
    log(`dht-walk ${N} ${shape.disjointPaths}x${shape.alpha}: ${JSON.stringify(result)}`)
    return result
  } finally {
    await stopWorkers(workers)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const sizes = process.argv.slice(2).map(Number).filter(Number.isFinite)
  const shapes = (process.env.DHT_SHAPES ?? '20x10,1x3,1x10,3x3').split(',').map((s) => {
    const [disjointPaths, alpha] = s.split('x').map(Number)
    return { disjointPaths: disjointPaths!, alpha: alpha! }
  })
  const results: WalkResult[] = []
  for (const N of sizes.length > 0 ? sizes : [100, 200])
    for (const shape of shapes) {
      results.push(await cluster(N, shape, 1))
      // after each cluster: a run stopped part-way keeps what it measured
      await writeFile(`${RESULTS}dht-walk.json`, `${JSON.stringify(results, null, 2)}\n`)
    }
  process.exit(0)
}
