import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { digestOf } from '../../src/oci/index.js'
import { digestKey, type RoutingKey } from '../../src/routing/keys.js'
import type { Peer, Router } from '../../src/routing/router.js'
import { eventually } from '../harness/index.js'

export interface RouterFixture {
  routers: Router[]
  /** The peer endpoint URL each router advertises. */
  urls: string[]
  /** Stops router i abruptly (as a crashed node). */
  stopNode(i: number): Promise<void>
  teardown(): Promise<void>
}

export interface RouterConformanceInit {
  /** Nodes in the network (≥ 5 for the DHT). */
  nodes: number
  /** How long a withdrawn or dead provider may still be returned by others (record validity). */
  withdrawWithinMs: number
}

async function resolveAll(
  router: Router,
  key: RoutingKey,
  timeoutMs = 2000,
  limit?: number,
): Promise<Peer[]> {
  const out: Peer[] = []
  for await (const p of router.resolve(key, { signal: AbortSignal.timeout(timeoutMs), limit })) out.push(p)
  return out
}

let counter = 0
const newKey = (): RoutingKey => digestKey(digestOf(`conformance-${process.pid}-${Date.now()}-${counter++}`))

/** One suite for every Router: advertise → resolve from every other node, self, dedup, limit, withdraw, deadlines. */
export function routerConformance(
  name: string,
  init: RouterConformanceInit,
  setup: (nodes: number) => Promise<RouterFixture>,
): void {
  describe(`Router conformance: ${name}`, () => {
    let fx: RouterFixture

    beforeAll(async () => {
      fx = await setup(init.nodes)
    }, 120_000)

    afterAll(async () => {
      await fx?.teardown()
    })

    it('a lone node is ready by itself, and resolving on it ends', async () => {
      const lone = await setup(1)
      try {
        expect(lone.routers[0]!.isReady()).toBe(true)
        await lone.routers[0]!.advertise([newKey()])
        expect(await resolveAll(lone.routers[0]!, newKey(), 1000)).toEqual([])
      } finally {
        await lone.teardown()
      }
    })

    it('every node is ready', () => {
      for (const r of fx.routers) expect(r.isReady()).toBe(true)
    })

    it('a key advertised on one node resolves from every other node, with its peer URL, never self', async () => {
      const key = newKey()
      await fx.routers[0]!.advertise([key])
      for (let i = 1; i < fx.routers.length; i++) {
        await eventually(async () => {
          const peers = await resolveAll(fx.routers[i]!, key)
          expect(peers).toEqual([{ id: expect.any(String), url: fx.urls[0] }])
        })
      }
      expect(await resolveAll(fx.routers[0]!, key)).toEqual([])
    })

    it('several providers: each once, never self; limit stops early', async () => {
      const key = newKey()
      await Promise.all([
        fx.routers[1]!.advertise([key]),
        fx.routers[2]!.advertise([key]),
        fx.routers[3]!.advertise([key]),
      ])
      await eventually(async () => {
        const peers = await resolveAll(fx.routers[0]!, key)
        expect(peers.map((p) => p.url).sort()).toEqual([fx.urls[1], fx.urls[2], fx.urls[3]].sort())
      })
      await eventually(async () => {
        const fromOne = await resolveAll(fx.routers[1]!, key)
        expect(fromOne.map((p) => p.url).sort()).toEqual([fx.urls[2], fx.urls[3]].sort())
        expect(new Set(fromOne.map((p) => p.id)).size).toBe(fromOne.length)
      })
      // limit 1: exactly one provider, and the lookup ends there (retried: a loaded machine may need longer)
      await eventually(async () => expect(await resolveAll(fx.routers[0]!, key, 2000, 1)).toHaveLength(1))
    })

    it('an unknown key ends at the deadline with no peers, and an aborted signal ends it at once', async () => {
      expect(await resolveAll(fx.routers[1]!, newKey(), 300)).toEqual([])
      const ac = new AbortController()
      ac.abort()
      const out: Peer[] = []
      for await (const p of fx.routers[1]!.resolve(newKey(), { signal: ac.signal })) out.push(p)
      expect(out).toEqual([])
    })

    it('a withdrawn key stops resolving to the withdrawing node', async () => {
      const key = newKey()
      await fx.routers[1]!.advertise([key])
      await fx.routers[2]!.advertise([key])
      await eventually(async () => expect((await resolveAll(fx.routers[0]!, key)).length).toBe(2))
      await fx.routers[1]!.withdraw([key])
      await eventually(async () => {
        const peers = await resolveAll(fx.routers[0]!, key)
        expect(peers.map((p) => p.url)).toEqual([fx.urls[2]])
      }, init.withdrawWithinMs + 10_000)
    }, 60_000)

    it('a stopped provider does not make resolve hang', async () => {
      const last = fx.routers.length - 1
      const key = newKey()
      await fx.routers[last]!.advertise([key])
      await eventually(async () => expect((await resolveAll(fx.routers[0]!, key)).length).toBe(1))
      await fx.stopNode(last)
      // every lookup ends by its deadline, and the stopped node stops being returned
      await eventually(async () => {
        const peers = await resolveAll(fx.routers[0]!, key, 3000)
        expect(peers.map((p) => p.url)).not.toContain(fx.urls[last])
      }, 30_000)
    }, 60_000)
  })
}
