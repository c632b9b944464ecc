import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { BufferPool } from '../../src/buffer-pool.js'
import { MemoryStore } from '../../src/store/memory.js'
import { misbehavingPeer, type MirrorNode, seedImage, sha, startMirror, startPeer } from './fixtures.js'

// The relay path with pooled buffers: bytes read from a peer socket go to the client without a copy and
// the buffers are reused once written, so a reuse bug would show up as wrong bytes in a later download.

const BODY_IDLE_MS = 500
const HEADERS_MS = 400

describe('relay: pooled buffers and deadlines', () => {
  let node: MirrorNode
  const cleanups: (() => Promise<void>)[] = []
  beforeAll(async () => {
    node = await startMirror({ bodyIdleTimeoutMs: BODY_IDLE_MS, peerHeadersTimeoutMs: HEADERS_MS })
  })
  afterEach(async () => {
    for (const c of cleanups.splice(0)) await c()
    node.network.providers.clear()
  })
  afterAll(() => node.close())

  it('a blob of many buffers, relayed several times, is byte-exact every time (buffers reused safely)', async () => {
    // 21 MiB + 3 bytes: several pool buffers and a short last one
    const peer = await startPeer((s) => seedImage(s, 'docker.io/library/app:v1', 21 * 1024 * 1024 + 3))
    cleanups.push(peer.close)
    // bytes, not deadlines, are under test: a loaded machine must not stall this one past a 500 ms idle deadline
    const relay = await startMirror({ bodyIdleTimeoutMs: 10_000, peerHeadersTimeoutMs: 5000 })
    cleanups.push(relay.close)
    await relay.provide('good', peer.url, peer.image)
    const url = `${relay.url}/v2/library/app/blobs/${peer.image.layerDigest}`
    // two at once, then one more: concurrent downloads share the pool
    const bodies = await Promise.all([fetchBody(url), fetchBody(url)])
    bodies.push(await fetchBody(url))
    for (const b of bodies) {
      expect(b.length).toBe(peer.image.layer.length)
      expect(sha(b)).toBe(peer.image.layerDigest)
    }
  })

  it('a frozen peer (headers and part of the body, then silence) is aborted within the body-idle deadline', async () => {
    const img = seedImage(new MemoryStore(), 'docker.io/library/app:v1', 4 * 1024 * 1024)
    const frozen = await misbehavingPeer((_req, res) => {
      res.writeHead(200, { 'content-length': String(img.layer.length) })
      res.write(img.layer.subarray(0, 1024 * 1024)) // then nothing, connection left open
    })
    cleanups.push(frozen.close)
    await node.provide('frozen', frozen.url, img)
    const started = performance.now()
    const res = await fetch(`${node.url}/v2/library/app/blobs/${img.layerDigest}`, {
      signal: AbortSignal.timeout(10_000),
    })
    expect(res.status).toBe(200) // headers went out with the first bytes
    await expect(res.arrayBuffer()).rejects.toThrow() // a short body, never a complete corrupt one
    const elapsedMs = performance.now() - started
    // the bound: no body progress for BODY_IDLE_MS, then up to HEADERS_MS looking for another peer
    expect(elapsedMs).toBeLessThan(BODY_IDLE_MS + HEADERS_MS + 2000)
  })

  it('a frozen peer and a good one: the body resumes from the good peer and is byte-exact', async () => {
    const good = await startPeer((s) => seedImage(s, 'docker.io/library/app:v1', 12 * 1024 * 1024))
    const frozen = await misbehavingPeer((_req, res) => {
      res.writeHead(200, { 'content-length': String(good.image.layer.length) })
      res.write(good.image.layer.subarray(0, 2 * 1024 * 1024 + 17))
    })
    cleanups.push(good.close, frozen.close)
    await node.provide('frozen', frozen.url, good.image) // found first, answers at once, wins the race
    await node.provide('good', good.url, good.image)
    const body = await fetchBody(`${node.url}/v2/library/app/blobs/${good.image.layerDigest}`)
    expect(sha(body)).toBe(good.image.layerDigest)
    expect(frozen.hits()).toBe(1)
  })

  it('a corrupt big blob: the client connection is aborted, never a clean body', async () => {
    const img = seedImage(new MemoryStore(), 'docker.io/library/app:v1', 12 * 1024 * 1024 + 5)
    const corrupt = await misbehavingPeer((_req, res) => {
      const bad = Buffer.from(img.layer)
      bad[5 * 1024 * 1024] = (bad[5 * 1024 * 1024] as number) ^ 0xff // one byte, mid-body
      res.writeHead(200, { 'content-length': String(bad.length) })
      res.end(bad)
    })
    cleanups.push(corrupt.close)
    await node.provide('corrupt', corrupt.url, img)
    const res = await fetch(`${node.url}/v2/library/app/blobs/${img.layerDigest}`, {
      signal: AbortSignal.timeout(10_000),
    })
    expect(res.status).toBe(200)
    await expect(res.arrayBuffer()).rejects.toThrow()
  })
})

describe('BufferPool', () => {
  it('takes back exactly the view it lent, once; slices, copies and foreign buffers are left alone', () => {
    const pool = new BufferPool({ bufferBytes: 1024, maxFree: 4 })
    const a = pool.take()
    const view = pool.lend(a.subarray(0, 100))
    BufferPool.recycle(view.subarray(0, 50)) // a slice of the lent view
    BufferPool.recycle(Buffer.from(view)) // a copy
    BufferPool.recycle(Buffer.alloc(1024)) // never lent
    expect(pool.freeCount).toBe(0)
    BufferPool.recycle(view)
    expect(pool.freeCount).toBe(1)
    BufferPool.recycle(view) // twice: still one
    expect(pool.freeCount).toBe(1)
    expect(pool.take().buffer).toBe(a.buffer)
    expect(pool.freeCount).toBe(0)
  })

  it('keeps at most maxFree buffers', () => {
    const pool = new BufferPool({ bufferBytes: 64, maxFree: 2 })
    const views = Array.from({ length: 5 }, () => pool.lend(pool.take()))
    for (const v of views) BufferPool.recycle(v)
    expect(pool.freeCount).toBe(2)
  })
})

async function fetchBody(url: string): Promise<Buffer> {
  const res = await fetch(url, { signal: AbortSignal.timeout(20_000) })
  expect(res.status).toBe(200)
  return Buffer.from(await res.arrayBuffer())
}
