/**
 * DHT: time to advertise 10,000 keys on one node of 10; resolve latency (first provider) p50/p99 at 10 and
 * 20 nodes, plus misses. All nodes are real libp2p kad-dht instances on 127.0.0.1 in this process.
 */
import { digestOf } from '../src/oci/index.js'
import { KadDhtRouter } from '../src/routing/kad-dht.js'
import { digestKey, type RoutingKey } from '../src/routing/keys.js'
import pino from 'pino'
import { log, stats, type Stats } from './lib.js'

export interface RoutingBenchResult {
  advertise: {
    keys: number
    /** Until every key resolves from another node (connected peers learn them through the key exchange). */
    secondsUntilResolvable: number
    /** DHT provides in the background (for peers beyond direct connections), measured up to the cap. */
    dhtProvided: number
    dhtSeconds: number
    dhtKeysPerSecond: number
  }
  resolve: Record<string, { hit: Stats; miss: Stats }>
}

async function firstPeerMs(router: KadDhtRouter, key: RoutingKey): Promise<number | undefined> {
  const t0 = performance.now()
  for await (const _ of router.resolve(key, { signal: AbortSignal.timeout(2000), limit: 1 }))
    return performance.now() - t0
  return undefined
}

async function addNodes(routers: KadDhtRouter[], count: number): Promise<void> {
  const logger = pino({ level: 'silent' })
  for (let i = 0; i < count; i++) {
    const bootstrap = routers.length > 0 ? routers[0]!.multiaddrs().map(String) : []
    const r = new KadDhtRouter(
      { logger },
      {
        listen: ['/ip4/127.0.0.1/tcp/0'],
        peerUrl: `http://127.0.0.1:${42000 + routers.length}`,
        bootstrap,
        // this scenario measures the DHT's provide rate; by default a cluster this small needs no provides
        dhtProvides: 'always',
      },
    )
    await r.start()
    routers.push(r)
  }
  const deadline = Date.now() + 30_000
  while (
    routers.some((r) => r.routingTableSize() < Math.min(routers.length - 1, 5)) &&
    Date.now() < deadline
  ) {
    await new Promise((r) => setTimeout(r, 200))
  }
}

async function measure(
  routers: KadDhtRouter[],
  keys: RoutingKey[],
  samples: number,
): Promise<{ hit: Stats; miss: Stats }> {
  const hit: number[] = []
  const miss: number[] = []
  for (let i = 0; i < samples; i++) {
    const from = routers[1 + (i % (routers.length - 1))]!
    const t = await firstPeerMs(from, keys[i % keys.length]!)
    if (t !== undefined) hit.push(t)
    const t0 = performance.now()
    for await (const _ of from.resolve(digestKey(digestOf(`miss-${i}-${Date.now()}`)), {
      signal: AbortSignal.timeout(2000),
    }))
      break
    miss.push(performance.now() - t0)
  }
  return { hit: stats(hit), miss: stats(miss) }
}

export async function benchRouting(
  init: { keys?: number; capSeconds?: number; samples?: number } = {},
): Promise<RoutingBenchResult> {
  const total = init.keys ?? 10_000
  const cap = (init.capSeconds ?? 120) * 1000
  const samples = init.samples ?? 200
  const routers: KadDhtRouter[] = []
  try {
    await addNodes(routers, 10)
    const keys = Array.from({ length: total }, (_, i) => digestKey(digestOf(`bench-key-${i}`)))
    log(`routing: advertising ${total} keys on one node of 10`)
    const t0 = performance.now()
    await routers[0]!.advertise(keys)
    // every other node can resolve the last key (and a sample of the rest)
    for (const r of routers.slice(1)) {
      for (const k of [keys[total - 1]!, keys[0]!, keys[Math.floor(total / 2)]!]) {
        while ((await firstPeerMs(r, k)) === undefined) await new Promise((x) => setTimeout(x, 20))
      }
    }
    const secondsUntilResolvable = (performance.now() - t0) / 1000
    log(
      `routing: ${total} keys resolvable from all 9 other nodes after ${secondsUntilResolvable.toFixed(2)} s`,
    )
    // the DHT provides keep going in the background; measure their rate up to the cap
    const start = routers[0]!.pendingProvides()
    while (routers[0]!.pendingProvides() > 0 && performance.now() - t0 < cap)
      await new Promise((x) => setTimeout(x, 1000))
    const dhtSeconds = (performance.now() - t0) / 1000
    const dhtProvided = start - routers[0]!.pendingProvides()
    log(`routing: DHT provided ${dhtProvided} of ${total} keys in ${dhtSeconds.toFixed(0)} s`)
    const resolve: RoutingBenchResult['resolve'] = {}
    resolve['10 nodes'] = await measure(routers, keys, samples)
    log(
      `routing: 10 nodes: hit p50 ${resolve['10 nodes'].hit.p50.toFixed(1)} ms p99 ${resolve['10 nodes'].hit.p99.toFixed(1)} ms`,
    )
    await addNodes(routers, 10)
    const fresh = Array.from({ length: samples }, (_, i) => digestKey(digestOf(`bench-key-20-${i}`)))
    await routers[0]!.advertise(fresh)
    resolve['20 nodes'] = await measure(routers, fresh, samples)
    log(
      `routing: 20 nodes: hit p50 ${resolve['20 nodes'].hit.p50.toFixed(1)} ms p99 ${resolve['20 nodes'].hit.p99.toFixed(1)} ms`,
    )
    return {
      advertise: {
        keys: total,
        secondsUntilResolvable,
        dhtProvided,
        dhtSeconds,
        dhtKeysPerSecond: dhtProvided / dhtSeconds,
      },
      resolve,
    }
  } finally {
    await Promise.all(routers.map((r) => r.stop()))
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(
    JSON.stringify(
      await benchRouting({
        keys: Number(process.env.KEYS ?? 10_000),
        capSeconds: Number(process.env.CAP ?? 300),
      }),
      null,
      2,
    ),
  )
}
