import pino from 'pino'
import { KadDhtRouter, type KadDhtRouterInit } from '../../src/routing/kad-dht.js'
import type { RouterFixture } from '../conformance/router.js'

/** N real kad-dht nodes on 127.0.0.1, each bootstrapping from the first (short record validity for tests). */
export async function kadDhtNetwork(
  n: number,
  init: { recordValidityMs?: number; reprovideIntervalMs?: number; keyExchange?: boolean } = {},
): Promise<RouterFixture & { routers: KadDhtRouter[] }> {
  const logger = pino({ level: process.env.KAGAMI_TEST_LOG ?? 'silent' })
  const routers: KadDhtRouter[] = []
  const urls: string[] = []
  const stopped = new Set<number>()
  try {
    for (let i = 0; i < n; i++) {
      const url = `http://127.0.0.1:${41000 + i}`
      const first = routers[0]
      const r = new KadDhtRouter(
        { logger },
        {
          listen: ['/ip4/127.0.0.1/tcp/0'],
          peerUrl: url,
          bootstrap: first === undefined ? [] : first.multiaddrs().map(String),
          recordValidityMs: init.recordValidityMs ?? 4000,
          reprovideIntervalMs: init.reprovideIntervalMs ?? 1000,
          rebootstrapIntervalMs: 1000,
          keyExchange: init.keyExchange,
        },
      )
      await r.start()
      routers.push(r)
      urls.push(url)
    }
  } catch (err) {
    for (const r of routers) await r.stop()
    throw err
  }
  // wait until every node knows at least one other's peer URL (identify done)
  const deadline = Date.now() + 20_000
  while (n > 1 && routers.some((r) => r.peers().length === 0) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100))
  }
  return {
    routers,
    urls,
    async stopNode(i) {
      stopped.add(i)
      await routers[i]!.stop()
    },
    async teardown() {
      await Promise.all(routers.map((r, i) => (stopped.has(i) ? undefined : r.stop())))
    },
  }
}

/**
 * Starts `n` more routers on 127.0.0.1 that bootstrap from `routers[0]`, appends them to `routers` and returns
 * them. Each announces the peer URL http://127.0.0.1:<portBase + its index in `routers`>.
 */
export async function joinRouters(
  routers: KadDhtRouter[],
  n: number,
  portBase: number,
  init: Partial<KadDhtRouterInit> = {},
): Promise<KadDhtRouter[]> {
  const logger = pino({ level: process.env.KAGAMI_TEST_LOG ?? 'silent' })
  const added: KadDhtRouter[] = []
  for (let i = 0; i < n; i++) {
    const r = new KadDhtRouter(
      { logger },
      {
        listen: ['/ip4/127.0.0.1/tcp/0'],
        peerUrl: `http://127.0.0.1:${portBase + routers.length}`,
        bootstrap: routers[0]?.multiaddrs().map(String) ?? [],
        rebootstrapIntervalMs: 1000,
        ...init,
      },
    )
    await r.start()
    routers.push(r)
    added.push(r)
  }
  return added
}
