import { Readable } from 'node:stream'
import pino from 'pino'
import { Registry } from 'prom-client'
import { describe, expect, it } from 'vitest'
import type { Digest, DistributionRequest } from '../../src/oci/index.js'
import { elect, Herd } from '../../src/registry/herd.js'
import type { PeerFetcher } from '../../src/registry/peers.js'
import { resolveContent } from '../../src/registry/resolve.js'
import { MemoryStore } from '../../src/store/memory.js'
import type { BlobAnswer, BlobQuery } from '../../src/upstream/client.js'
import { sha } from './fixtures.js'

const logger = pino({ level: process.env.KAGAMI_TEST_LOG ?? 'silent' })

function blob(bytes: number): Buffer {
  const b = Buffer.alloc(bytes)
  for (let i = 0; i + 4 <= b.length; i += 4) b.writeUInt32LE((i * 2654435761) >>> 0, i)
  return b
}

async function collect(body: unknown): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of body as AsyncIterable<Buffer>) chunks.push(Buffer.from(c))
  return Buffer.concat(chunks)
}

/** An upstream that sends `bytes` in pieces, counting how often it was asked. */
function fakeUpstream(answer: 'found' | 'denied', bytes: Buffer) {
  let opened = 0
  return {
    opened: () => opened,
    async openBlob(_q: BlobQuery): Promise<BlobAnswer> {
      opened++
      if (answer === 'denied') return { kind: 'denied', status: 401 }
      async function* pieces(): AsyncGenerator<Buffer> {
        for (let i = 0; i < bytes.length; i += 256 * 1024) {
          await new Promise((r) => setTimeout(r, 5))
          yield bytes.subarray(i, i + 256 * 1024)
        }
      }
      return { kind: 'found', sizeBytes: bytes.length, body: Readable.from(pieces()) }
    },
  }
}

function herdOn(store: MemoryStore, upstream: ReturnType<typeof fakeUpstream>, expected: Digest[] = []) {
  return new Herd({
    self: () => 'self',
    router: { peers: () => [] },
    upstream,
    store,
    expect: (d) => expected.push(d),
    fetchFrom: async () => undefined,
    logger,
    metrics: new Registry(),
  })
}

const request = (digest: Digest): Extract<DistributionRequest, { kind: 'blob' }> => ({
  kind: 'blob',
  registry: 'docker.io',
  repository: 'library/app',
  reference: { digest },
})
const client = () => ({ method: 'GET' as const, signal: new AbortController().signal })

describe('herd', () => {
  it('elects the same node from the same live set, whatever the order, and spreads digests', () => {
    const ids = ['a', 'b', 'c', 'd', 'e']
    const winners = new Map<string, number>()
    for (let i = 0; i < 200; i++) {
      const d = sha(Buffer.from(String(i)))
      const w = elect(d, ids) as string
      expect(elect(d, [...ids].reverse())).toBe(w)
      winners.set(w, (winners.get(w) ?? 0) + 1)
    }
    expect(winners.size).toBe(5)
    // a node leaving moves only the digests it won
    for (let i = 0; i < 200; i++) {
      const d = sha(Buffer.from(String(i)))
      const w = elect(d, ids) as string
      if (w !== 'c')
        expect(
          elect(
            d,
            ids.filter((x) => x !== 'c'),
          ),
        ).toBe(w)
    }
  })

  it('requests at once share one upstream fetch; each gets the whole blob, which then is ordinary content', async () => {
    const bytes = blob(3 * 1024 * 1024 + 5)
    const digest = sha(bytes) as Digest
    const store = new MemoryStore()
    const upstream = fakeUpstream('found', bytes)
    const expected: Digest[] = []
    const herd = herdOn(store, upstream, expected)
    const served = await Promise.all([
      herd.serve(request(digest), client(), 'peer'),
      herd.serve(request(digest), client(), 'peer', bytes.length),
      herd.serve(request(digest), client(), 'self'),
    ])
    const bodies = await Promise.all(served.map((s) => collect(s.body)))
    for (const b of bodies) expect(sha(b)).toBe(digest)
    expect(upstream.opened()).toBe(1)
    expect(expected).toEqual([digest]) // advertised in flight
    await new Promise((r) => setTimeout(r, 50))
    expect((await store.stat(digest)).sizeBytes).toBe(bytes.length)
    herd.stop()
  })

  it('a private blob (401 anonymously) is not coalesced: 404, and the refusal is remembered', async () => {
    const bytes = blob(1024)
    const digest = sha(bytes) as Digest
    const upstream = fakeUpstream('denied', bytes)
    const herd = herdOn(new MemoryStore(), upstream)
    await expect(herd.serve(request(digest), client(), 'peer', bytes.length)).rejects.toMatchObject({
      name: 'NotFoundError',
    })
    await expect(herd.serve(request(digest), client(), 'peer')).rejects.toMatchObject({
      name: 'NotFoundError',
    })
    expect(upstream.opened()).toBe(1)
    // and a request carrying credentials never asks anyone
    expect(
      await herd.fetch(request(digest), { ...client(), authorization: 'Basic dXNlcjpwYXNz' }),
    ).toBeUndefined()
    herd.stop()
  })

  it('our own containerd joins a flight that is still arriving, and never a finished one', async () => {
    const bytes = blob(2 * 1024 * 1024 + 3)
    const digest = sha(bytes) as Digest
    const store = new MemoryStore()
    const upstream = fakeUpstream('found', bytes)
    const herd = herdOn(store, upstream)
    expect(await herd.join(request(digest), client())).toBeUndefined() // no flight here: ask peers
    const forPeer = await herd.serve(request(digest), client(), 'peer', bytes.length)
    const joined = await herd.join(request(digest), client())
    expect(joined).toBeDefined()
    const [a, b] = await Promise.all([collect(forPeer.body), collect(joined?.body)])
    expect(sha(a)).toBe(digest)
    expect(sha(b)).toBe(digest)
    expect(upstream.opened()).toBe(1)
    await new Promise((r) => setTimeout(r, 50))
    // committed: the local path serves it (or, once deleted, nobody here does)
    expect(await herd.join(request(digest), client())).toBeUndefined()
    herd.stop()
  })

  // Marked before, every node of a herd advertised an empty download with no source yet, and two nodes could
  // follow each other's (bench: 5 s stalls, then upstream). A node only advertises a download that has one.
  it('a miss marks our download in flight only once its source is fixed (peer, elected node or upstream)', async () => {
    const digest = sha(Buffer.from('layer')) as Digest
    const events: string[] = []
    const components = {
      store: new MemoryStore(),
      advertises: () => false,
      expect: () => void events.push('expect'),
      peers: {
        fetch: async () => {
          events.push('peers')
          return undefined
        },
      } as unknown as PeerFetcher,
      herd: {
        join: async () => void events.push('join'),
        fetch: async () => void events.push('elected'),
        serve: async () => {
          throw new Error('not the peer endpoint')
        },
      },
    }
    await expect(resolveContent(components, request(digest), client())).rejects.toMatchObject({
      name: 'NotFoundError',
    })
    expect(events).toEqual(['join', 'peers', 'elected', 'expect'])
  })

  it('an elected node that answers late: one more look finds a node already following it, before any 404', async () => {
    // a digest this 2-node set elects the other node for
    let digest = sha(Buffer.from('0')) as Digest
    for (let i = 1; elect(digest, ['self', 'other']) !== 'other'; i++)
      digest = sha(Buffer.from(String(i))) as Digest
    const follower = { source: 'peer' as const, status: 200 as const, headers: {}, digest }
    const looked: Digest[] = []
    const herd = new Herd(
      {
        self: () => 'self',
        router: { peers: () => [{ id: 'other', url: 'http://127.0.0.1:1' }] },
        upstream: fakeUpstream('found', blob(16)),
        store: new MemoryStore(),
        expect: () => undefined,
        // the elected node is busy: no answer within the budget
        fetchFrom: async () => {
          await new Promise((r) => setTimeout(r, 120))
          return undefined
        },
        lookAgain: async (req) => {
          looked.push((req.reference as { digest: Digest }).digest)
          return follower
        },
        logger,
        metrics: new Registry(),
      },
      { budgetMs: 50, budgetMaxMs: 50 },
    )
    expect(await herd.fetch(request(digest), client())).toBe(follower)
    expect(looked).toEqual([digest])
    herd.stop()
  })
})
