import { get, type IncomingMessage, type ServerResponse } from 'node:http'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { MemoryStore } from '../../src/store/memory.js'
import {
  misbehavingPeer,
  type MirrorNode,
  seedImage,
  sha,
  startMirror,
  startPeer,
  type TestImage,
} from './fixtures.js'

// Striping (src/registry/stripe.ts) over real sockets: peers serve Range requests of one blob; some of them
// die, freeze, trickle or corrupt. The mirror's body must be byte-exact, or cut short, never complete and
// wrong.

const STRIPE = 256 * 1024
const BLOB = 8 * 1024 * 1024 + 3 // 33 stripes, the last one 3 bytes

describe('striping: a big blob from several peers at once', () => {
  let node: MirrorNode
  const cleanups: (() => Promise<void>)[] = []
  beforeAll(async () => {
    node = await startMirror({
      bodyIdleTimeoutMs: 500,
      peerHeadersTimeoutMs: 400,
      // every body switches to stripes after its first two 512 KiB windows, however fast its one peer is
      stripe: {
        thresholdBytes: 1024 * 1024,
        stripeBytes: STRIPE,
        holdersWaitMs: 50,
        minSingleBytesPerSecond: Number.MAX_SAFE_INTEGER,
        probeBytes: 512 * 1024,
      },
    })
  })
  afterEach(async () => {
    for (const c of cleanups.splice(0)) await c()
    node.network.providers.clear()
  })
  afterAll(() => node.close())

  const image = (bytes = BLOB, name = 'docker.io/library/app:v1'): TestImage =>
    seedImage(new MemoryStore(), name, bytes)
  const blobUrl = (img: TestImage): string => `${node.url}/v2/library/app/blobs/${img.layerDigest}`
  const metric = async (name: string, result: string): Promise<number> => {
    const m = (await node.metrics.getMetricsAsJSON()).find((x) => x.name === name)
    return Number(m?.values.find((v) => v.labels.result === result)?.value ?? 0)
  }

  it('three real peer endpoints: byte-identical to the blob, the stripes counted', async () => {
    const img = (s: MemoryStore): TestImage => seedImage(s, 'docker.io/library/app:v1', BLOB)
    const peers = [await startPeer(img), await startPeer(img), await startPeer(img)]
    cleanups.push(...peers.map((p) => p.close))
    for (const [i, p] of peers.entries()) await node.provide(`real-${i}`, p.url, p.image)
    // each stripe is counted once when it completes: fetched, or refetched when a peer failed it first
    const stripesDone = async (): Promise<number> =>
      (await metric('kagami_stripes_total', 'fetched')) + (await metric('kagami_stripes_total', 'refetched'))
    const before = await stripesDone()
    const started = await metric('kagami_striped_blobs_total', 'started')
    const body = await fetchBody(blobUrl(peers[0]!.image))
    expect(body.equals(peers[0]!.image.layer)).toBe(true)
    expect(await metric('kagami_striped_blobs_total', 'started')).toBe(started + 1)
    // the first two 512 KiB windows (each ending with the socket read that crossed it) came from one peer
    const stripes = (await stripesDone()) - before
    expect(stripes).toBeGreaterThanOrEqual(Math.ceil((BLOB - 3 * 1024 * 1024) / STRIPE))
    expect(stripes).toBeLessThanOrEqual(Math.ceil(BLOB / STRIPE))
  })

  it('every holder serves stripes, and a client Range is answered from the striped body', async () => {
    const img = image()
    const peers = [await rangePeer(img.layer), await rangePeer(img.layer), await rangePeer(img.layer)]
    cleanups.push(...peers.map((p) => p.close))
    for (const [i, p] of peers.entries()) await node.provide(`r-${i}`, p.url, img)
    const body = await fetchBody(blobUrl(img))
    expect(sha(body)).toBe(img.layerDigest)
    for (const p of peers) expect(p.ranges()).toBeGreaterThan(0)
    const res = await fetch(blobUrl(img), {
      headers: { range: 'bytes=5000000-5999999' },
      signal: AbortSignal.timeout(20_000),
    })
    expect(res.status).toBe(206)
    expect(Buffer.from(await res.arrayBuffer()).equals(img.layer.subarray(5_000_000, 6_000_000))).toBe(true)
  })

  it("one stripe's peer is killed mid-stream: the stripe is re-fetched elsewhere, bytes exact", async () => {
    const img = image()
    const good = [await rangePeer(img.layer), await rangePeer(img.layer)]
    // its first range request: half the bytes, then the process "dies" (socket reset, port closed)
    const dying = await rangePeer(img.layer, (n, res, body) => {
      if (n === 1) return false // the race's whole-body GET: the first stripe
      res.write(body.subarray(0, body.length >> 1), () => {
        res.socket?.destroy()
        void dying.close()
      })
      return true
    })
    cleanups.push(...good.map((p) => p.close), dying.close)
    await node.provide('good-0', good[0]!.url, img)
    await node.provide('dying', dying.url, img)
    await node.provide('good-1', good[1]!.url, img)
    const refetched = await metric('kagami_stripes_total', 'refetched')
    const body = await fetchBody(blobUrl(img))
    expect(sha(body)).toBe(img.layerDigest)
    expect(dying.ranges()).toBeGreaterThan(0)
    expect(await metric('kagami_stripes_total', 'refetched')).toBeGreaterThan(refetched)
  })

  it('a frozen stripe peer (headers and some bytes, then silence): the stripe is re-fetched, bytes exact', async () => {
    const img = image()
    const good = [await rangePeer(img.layer), await rangePeer(img.layer)]
    const frozen = await rangePeer(img.layer, (n, res, body) => {
      if (n === 1) return false
      res.write(body.subarray(0, 1000)) // then nothing, the connection left open
      return true
    })
    cleanups.push(...good.map((p) => p.close), frozen.close)
    await node.provide('good-0', good[0]!.url, img)
    await node.provide('frozen', frozen.url, img)
    await node.provide('good-1', good[1]!.url, img)
    const refetched = await metric('kagami_stripes_total', 'refetched')
    const body = await fetchBody(blobUrl(img))
    expect(sha(body)).toBe(img.layerDigest)
    expect(frozen.ranges()).toBeGreaterThan(0)
    expect(await metric('kagami_stripes_total', 'refetched')).toBeGreaterThan(refetched)
  })

  it('a trickling stripe peer: its stripes are re-fetched from the others, bytes exact', async () => {
    const img = image()
    const good = [await rangePeer(img.layer), await rangePeer(img.layer)]
    let timer: NodeJS.Timeout | undefined
    const slow = await rangePeer(img.layer, (n, res, body) => {
      if (n === 1) return false
      // 100 bytes every 50 ms: always progress (no idle timeout), far below the floor
      let at = 0
      timer = setInterval(() => {
        if (res.destroyed || at >= body.length) return clearInterval(timer)
        res.write(body.subarray(at, (at += 100)))
      }, 50)
      return true
    })
    cleanups.push(...good.map((p) => p.close), slow.close, async () => clearInterval(timer))
    await node.provide('good-0', good[0]!.url, img)
    await node.provide('slow', slow.url, img)
    await node.provide('good-1', good[1]!.url, img)
    const body = await fetchBody(blobUrl(img))
    expect(sha(body)).toBe(img.layerDigest)
    expect(slow.ranges()).toBeGreaterThan(0)
  })

  it('a holder whose copy is still arriving is not striped over while complete holders are', async () => {
    const img = image()
    const good = [await rangePeer(img.layer), await rangePeer(img.layer)]
    const arriving = await rangePeer(img.layer, undefined, { 'x-kagami-in-flight': '1' })
    cleanups.push(...good.map((p) => p.close), arriving.close)
    await node.provide('good-0', good[0]!.url, img)
    await node.provide('arriving', arriving.url, img)
    await node.provide('good-1', good[1]!.url, img)
    const body = await fetchBody(blobUrl(img))
    expect(sha(body)).toBe(img.layerDigest)
    expect(arriving.ranges()).toBeLessThanOrEqual(1) // asked once, then left out
  })

  it('one peer corrupts its stripes: never a complete corrupt body, and a retry gets the right bytes', async () => {
    const img = image(BLOB, 'docker.io/library/app:v1')
    const good = [await rangePeer(img.layer), await rangePeer(img.layer)]
    const corrupt = await rangePeer(img.layer, (_n, res, body) => {
      const bad = Buffer.from(body)
      bad[bad.length >> 1] = (bad[bad.length >> 1] as number) ^ 0xff
      res.end(bad)
      return true
    })
    cleanups.push(...good.map((p) => p.close), corrupt.close)
    await node.provide('good-0', good[0]!.url, img)
    await node.provide('corrupt', corrupt.url, img)
    await node.provide('good-1', good[1]!.url, img)
    const failed = await metric('kagami_striped_blobs_total', 'failed')
    // containerd retries a short body: do the same, a bounded number of times
    let complete: Buffer | undefined
    const outcomes: string[] = []
    for (let attempt = 0; attempt < 4 && complete === undefined; attempt++) {
      const res = await fetch(blobUrl(img), { signal: AbortSignal.timeout(20_000) })
      if (res.status !== 200) {
        outcomes.push(String(res.status))
        continue
      }
      try {
        complete = Buffer.from(await res.arrayBuffer())
        outcomes.push('complete')
      } catch {
        outcomes.push('short')
      }
    }
    expect(complete, outcomes.join(',')).toBeDefined()
    expect(sha(complete as Buffer)).toBe(img.layerDigest) // the only complete body is the right one
    expect(corrupt.hits()).toBeGreaterThan(0)
    if (outcomes[0] === 'short') expect(await metric('kagami_striped_blobs_total', 'failed')).toBe(failed + 1)
  })

  it('the client going away cancels every stripe', async () => {
    const img = image(32 * 1024 * 1024)
    const slow = (): Promise<RangePeer> =>
      rangePeer(img.layer, (_n, res, body) => {
        // 64 KiB every 20 ms, long enough to still be sending when the client leaves
        let at = 0
        const timer = setInterval(() => {
          if (res.destroyed || at >= body.length) return clearInterval(timer)
          res.write(body.subarray(at, (at += 64 * 1024)))
        }, 20)
        res.on('close', () => clearInterval(timer))
        return true
      })
    const peers = [await slow(), await slow(), await slow()]
    cleanups.push(...peers.map((p) => p.close))
    for (const [i, p] of peers.entries()) await node.provide(`s-${i}`, p.url, img)
    const controller = new AbortController()
    const res = await fetch(blobUrl(img), { signal: controller.signal })
    const reader = res.body!.getReader()
    await reader.read()
    await until(() => peers.every((p) => p.ranges() > 0) || undefined, 'every peer serves a stripe')
    controller.abort()
    await until(() => peers.every((p) => p.open() === 0) || undefined, 'every peer response closed')
  })

  it('a client that stops reading: peers send a bounded amount, not the whole blob', async () => {
    const img = image(64 * 1024 * 1024)
    const peers = [await rangePeer(img.layer), await rangePeer(img.layer), await rangePeer(img.layer)]
    cleanups.push(...peers.map((p) => p.close))
    for (const [i, p] of peers.entries()) await node.provide(`m-${i}`, p.url, img)
    const req = get(blobUrl(img))
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      req.once('response', resolve)
      req.once('error', reject)
    })
    expect(res.statusCode).toBe(200)
    res.pause() // never read: only buffers and back-pressure remain
    const sent = (): number => peers.reduce((n, p) => n + p.bytes(), 0)
    // wait until the peers stop sending (the same total twice, 500 ms apart)
    let last = -1
    await until(async () => {
      const now = sent()
      const stable = now === last
      last = now
      await new Promise((r) => setTimeout(r, 500))
      return stable || undefined
    }, 'peers to stop sending')
    // the stripe window (6 × 256 KiB) plus stream and socket buffers, far below the 64 MiB blob
    expect(sent()).toBeLessThan(24 * 1024 * 1024)
    req.destroy()
    await until(() => peers.every((p) => p.open() === 0) || undefined, 'every peer response closed')
  })
})

describe('striping: a fast single peer', () => {
  it('a body whose one peer is fast enough stays with it (no stripes), byte-exact', async () => {
    const node = await startMirror({
      stripe: { thresholdBytes: 1024 * 1024, stripeBytes: STRIPE, minSingleBytesPerSecond: 1 },
    })
    const img = (s: MemoryStore): TestImage => seedImage(s, 'docker.io/library/app:v1', BLOB)
    const peers = [await startPeer(img), await startPeer(img)]
    try {
      for (const [i, p] of peers.entries()) await node.provide(`fast-${i}`, p.url, p.image)
      const body = await fetchBody(`${node.url}/v2/library/app/blobs/${peers[0]!.image.layerDigest}`)
      expect(body.equals(peers[0]!.image.layer)).toBe(true)
      const m = (await node.metrics.getMetricsAsJSON()).find((x) => x.name === 'kagami_striped_blobs_total')
      expect(m?.values.find((v) => v.labels.result === 'started')?.value).toBe(0)
    } finally {
      for (const p of peers) await p.close()
      await node.close()
    }
  })
})

interface RangePeer {
  url: string
  /** Requests, and those that asked for a Range. */
  hits(): number
  ranges(): number
  /** Body bytes the peer wrote to its sockets (flushed to the kernel). */
  bytes(): number
  /** Responses not closed yet. */
  open(): number
  close(): Promise<void>
}

/**
 * A peer serving one blob, with Range. `misbehave(n, res, body)` may take over the n-th request (headers
 * already written; `body` is the range asked for) by returning true.
 */
async function rangePeer(
  layer: Buffer,
  misbehave?: (n: number, res: ServerResponse, body: Buffer) => boolean,
  rangeHeaders: Record<string, string> = {},
): Promise<RangePeer> {
  let n = 0
  let ranges = 0
  let bytes = 0
  let open = 0
  let closed = false
  const p = await misbehavingPeer((req, res) => {
    n++
    open++
    res.on('close', () => open--)
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '')
    const start = m === null ? 0 : Number(m[1])
    const end = m === null || m[2] === '' ? layer.length - 1 : Number(m[2])
    const body = layer.subarray(start, end + 1)
    if (m !== null) ranges++
    res.writeHead(m === null ? 200 : 206, {
      'content-length': String(body.length),
      ...(m === null ? {} : { 'content-range': `bytes ${start}-${end}/${layer.length}`, ...rangeHeaders }),
    })
    if (misbehave?.(n, res, body) === true) return
    // in 64 KiB writes honouring back-pressure, so `bytes` counts what left for the socket
    let at = 0
    const more = (): void => {
      while (at < body.length && !res.destroyed) {
        const piece = body.subarray(at, at + 64 * 1024)
        at += piece.length
        const ok = res.write(piece, () => (bytes += piece.length))
        if (!ok) return void res.once('drain', more)
      }
      if (at >= body.length) res.end()
    }
    more()
  })
  return {
    url: p.url,
    hits: () => n,
    ranges: () => ranges,
    bytes: () => bytes,
    open: () => open,
    close: async () => {
      if (closed) return
      closed = true
      await p.close()
    },
  }
}

async function fetchBody(url: string): Promise<Buffer> {
  const res = await fetch(url, { signal: AbortSignal.timeout(30_000) })
  expect(res.status).toBe(200)
  return Buffer.from(await res.arrayBuffer())
}

/** Polls `check` until it returns a value; a bounded wait (10 s), not a timing assertion. */
async function until<T>(check: () => T | undefined | Promise<T | undefined>, what: string): Promise<T> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const v = await check()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}
