import { connect, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { IN_FLIGHT_HEADER } from '../../src/registry/served.js'
import { MemoryStore } from '../../src/store/memory.js'
import { misbehavingPeer, type MirrorNode, seedImage, sha, startMirror, startPeer } from './fixtures.js'

const closers: (() => Promise<unknown>)[] = []
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c()
})

async function metric(node: MirrorNode, name: string, labels: string): Promise<number> {
  const text = await node.metrics.metrics()
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`) && l.includes(labels))
    .reduce((n, l) => n + Number(l.split(' ').at(-1)), 0)
}

function openSocket(url: string): Promise<Socket> {
  const u = new URL(url)
  return new Promise((resolve, reject) => {
    const s = connect({ host: u.hostname, port: Number(u.port) }, () => resolve(s))
    s.on('error', reject)
  })
}

/** Bytes and whether the body ended cleanly (a short body is how a relay says "failed"). */
async function download(url: string): Promise<{ status: number; bytes: Buffer; complete: boolean }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(20_000) })
  const chunks: Buffer[] = []
  try {
    for await (const c of res.body ?? []) chunks.push(Buffer.from(c))
    return { status: res.status, bytes: Buffer.concat(chunks), complete: true }
  } catch {
    return { status: res.status, bytes: Buffer.concat(chunks), complete: false }
  }
}

describe('hostile peers and clients: every wait and resource is bounded', () => {
  it('a peer trickling bytes is cut off by the throughput floor and skipped for that blob next time', async () => {
    const good = await startPeer()
    closers.push(good.close)
    const image = good.image
    // headers at once, then one byte every 300 ms: never idle long enough for the idle timeout
    const trickle = await misbehavingPeer((_req, res) => {
      res.writeHead(200, { 'content-length': String(image.layer.length) })
      let i = 0
      const t = setInterval(() => res.write(image.layer.subarray(i, ++i)), 300)
      res.on('close', () => clearInterval(t))
    })
    closers.push(trickle.close)
    const node = await startMirror({
      floorBytesPerSecond: 64 * 1024,
      floorWindowMs: 1000,
      hedgeDelayMs: 5000,
      // a loaded machine: neither the header deadline nor the idle timeout is what this tests
      peerHeadersTimeoutMs: 3000,
      bodyIdleTimeoutMs: 10_000,
    })
    closers.push(node.close)
    await node.provide('trickler', trickle.url, image)
    const started = performance.now()
    const first = await download(`${node.url}/v2/library/app/blobs/${image.layerDigest}?ns=docker.io`)
    // only the trickler holds it: the body ends short (containerd then resumes or goes upstream) …
    expect(first.status).toBe(200)
    expect(first.complete).toBe(false)
    expect(performance.now() - started).toBeLessThan(10_000)
    // … and the next attempt does not wait on it again: a fast 404, so containerd asks the registry
    const again = await fetch(`${node.url}/v2/library/app/blobs/${image.layerDigest}?ns=docker.io`)
    expect(again.status).toBe(404)
    // with a good peer around, the same blob is served whole
    await node.provide('good', good.url, image)
    const whole = await download(`${node.url}/v2/library/app/blobs/${image.layerDigest}?ns=docker.io`)
    expect(whole.complete).toBe(true)
    expect(sha(whole.bytes)).toBe(image.layerDigest)
    expect(await metric(node, 'kagami_peer_failures_total', 'reason="PeerTooSlowError"')).toBeGreaterThan(0)
  }, 30_000)

  // A download still arriving comes no faster than its own source: a herd behind an upstream slower than the
  // floor per blob used to cut its elected node off and send every node upstream.
  it('a response served in flight is held to a lower floor; the same pace without the mark is cut off', async () => {
    const image = seedImage(new MemoryStore(), 'docker.io/library/app:v1', 4 * 1024 * 1024)
    // ~1.5 MiB/s: under a 4 MiB/s floor, 3× its eighth (margin for a loaded machine's timers)
    const paced = (inFlight: boolean) =>
      misbehavingPeer((_req, res) => {
        res.writeHead(200, {
          'content-length': String(image.layer.length),
          ...(inFlight ? { [IN_FLIGHT_HEADER]: '1' } : {}),
        })
        let i = 0
        const t = setInterval(() => {
          res.write(image.layer.subarray(i, (i += 192 * 1024)))
          if (i >= image.layer.length) {
            clearInterval(t)
            res.end()
          }
        }, 125)
        res.on('close', () => clearInterval(t))
      })
    const results: boolean[] = []
    for (const inFlight of [true, false]) {
      const peer = await paced(inFlight)
      closers.push(peer.close)
      const node = await startMirror({
        floorBytesPerSecond: 4 * 1024 * 1024,
        floorWindowMs: 1000,
        peerHeadersTimeoutMs: 3000,
        bodyIdleTimeoutMs: 10_000,
      })
      closers.push(node.close)
      await node.provide('paced', peer.url, image)
      const got = await download(`${node.url}/v2/library/app/blobs/${image.layerDigest}?ns=docker.io`)
      if (got.complete) expect(sha(got.bytes)).toBe(image.layerDigest)
      results.push(got.complete)
    }
    expect(results).toEqual([true, false])
  }, 30_000)

  it('a peer claiming another length than the pull expects is refused and skipped', async () => {
    const good = await startPeer()
    closers.push(good.close)
    const image = good.image
    const liar = await misbehavingPeer((_req, res) => {
      res.writeHead(200, { 'content-length': String(8 * 1024 ** 3) })
      res.write(image.layer)
    })
    closers.push(liar.close)
    const node = await startMirror({ hedgeDelayMs: 5000, peerHeadersTimeoutMs: 3000 })
    closers.push(node.close)
    // containerd has opened its download: it knows the size from the manifest
    node.store.startIngest({
      ref: `layer-${image.layerDigest}`,
      expected: image.layerDigest,
      offsetBytes: 0,
      totalBytes: image.layer.length,
    })
    await node.provide('liar', liar.url, image)
    expect((await fetch(`${node.url}/v2/library/app/blobs/${image.layerDigest}?ns=docker.io`)).status).toBe(
      404,
    )
    await node.provide('good', good.url, image)
    const whole = await download(`${node.url}/v2/library/app/blobs/${image.layerDigest}?ns=docker.io`)
    expect(whole.bytes.length).toBe(image.layer.length)
    expect(sha(whole.bytes)).toBe(image.layerDigest)
  })

  it('a Range from a peer is hashed from byte 0: a corrupt peer never completes a resumed range', async () => {
    const corrupt = await startPeer((store) => {
      const img = seedImage(store)
      return img
    })
    closers.push(corrupt.close)
    const image = corrupt.image
    const bad = Buffer.from(image.layer)
    bad[bad.length - 10] = bad[bad.length - 10]! ^ 0xff
    const lying = await misbehavingPeer((req, res) => {
      const m = /bytes=(\d+)-/.exec(req.headers.range ?? '')
      const start = m === null ? 0 : Number(m[1])
      res.writeHead(m === null ? 200 : 206, {
        'content-length': String(bad.length - start),
        ...(m === null ? {} : { 'content-range': `bytes ${start}-${bad.length - 1}/${bad.length}` }),
      })
      res.end(bad.subarray(start))
    })
    closers.push(lying.close)
    const node = await startMirror()
    closers.push(node.close)
    await node.provide('lying', lying.url, image)
    const res = await fetch(`${node.url}/v2/library/app/blobs/${image.layerDigest}?ns=docker.io`, {
      headers: { range: `bytes=${bad.length - 100}-` },
    })
    let complete = true
    try {
      await res.arrayBuffer()
    } catch {
      complete = false
    }
    // an error status, or a short body: never a complete 206 of unverified bytes
    expect(res.status === 206 && complete).toBe(false)
    // the corrupt peer is skipped for that digest from then on
    expect((await fetch(`${node.url}/v2/library/app/blobs/${image.layerDigest}?ns=docker.io`)).status).toBe(
      404,
    )
  })

  it('slow-header and idle connections are closed; the in-flight gauge returns to 0 after aborted downloads', async () => {
    const node = await startMirror()
    closers.push(node.close)
    const image = seedImage(node.store, 'docker.io/library/app:v1', 32 * 1024 * 1024)
    // a request line and no end of headers (slowloris), and a connection that says nothing
    const slow = await openSocket(node.url)
    slow.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n')
    const idle = await openSocket(node.url)
    const closed = (s: Socket): Promise<number> =>
      new Promise((resolve) => {
        const t0 = performance.now()
        s.on('close', () => resolve(performance.now() - t0))
        s.resume()
      })
    const [slowMs] = await Promise.all([closed(slow), closed(idle)])
    expect(slowMs).toBeLessThan(15_000)
    // five downloads aborted mid-body
    for (let i = 0; i < 5; i++) {
      const ac = new AbortController()
      const res = await fetch(`${node.url}/v2/library/app/blobs/${image.layerDigest}`, { signal: ac.signal })
      const reader = res.body!.getReader()
      await reader.read()
      ac.abort()
      await reader.read().catch(() => undefined)
    }
    await expect
      .poll(() => metric(node, 'kagami_inflight_requests', 'server="mirror"'), { timeout: 5000 })
      .toBe(0)
  }, 60_000)

  it('download slots: past the limit a 503 with Retry-After, never unbounded buffers', async () => {
    const node = await startMirror()
    closers.push(node.close)
    const image = seedImage(node.store, 'docker.io/library/app:v1', 64 * 1024 * 1024)
    const sockets: Socket[] = []
    // 64 downloads that are never read hold every mirror slot
    for (let i = 0; i < 64; i++) {
      const s = await openSocket(node.url)
      s.pause()
      s.write(`GET /v2/library/app/blobs/${image.layerDigest} HTTP/1.1\r\nHost: x\r\n\r\n`)
      sockets.push(s)
    }
    closers.push(async () => sockets.forEach((s) => s.destroy()))
    await expect
      .poll(
        async () =>
          (await fetch(`${node.url}/v2/library/app/blobs/${image.layerDigest}`, { method: 'GET' })).status,
        { timeout: 10_000 },
      )
      .toBe(503)
    const res = await fetch(`${node.url}/v2/library/app/blobs/${image.layerDigest}`)
    expect(res.headers.get('retry-after')).toBe('1')
    expect(((await res.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('TOOMANYREQUESTS')
    // manifests and HEADs still answer
    expect(
      (await fetch(`${node.url}/v2/library/app/manifests/v1?ns=docker.io`, { method: 'HEAD' })).status,
    ).toBe(200)
  }, 60_000)
})
