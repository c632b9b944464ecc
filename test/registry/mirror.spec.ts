import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { MediaType } from '../../src/oci/index.js'
import {
  misbehavingPeer,
  type MirrorNode,
  seedImage,
  sha,
  startMirror,
  startPeer,
  type TestImage,
} from './fixtures.js'

async function get(
  url: string,
  init: RequestInit = {},
): Promise<{ status: number; headers: Headers; body: Buffer }> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(10_000) })
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) }
}

describe('mirror: local content', () => {
  let node: MirrorNode
  let image: TestImage
  beforeAll(async () => {
    node = await startMirror()
    image = seedImage(node.store)
  })
  afterAll(() => node.close())

  it('GET /v2/ answers 200 with the API version header', async () => {
    const r = await get(`${node.url}/v2/`)
    expect(r.status).toBe(200)
    expect(r.headers.get('docker-distribution-api-version')).toBe('registry/2.0')
  })

  it('HEAD manifest by tag carries digest, type and length (containerd needs all three)', async () => {
    const r = await fetch(`${node.url}/v2/library/app/manifests/v1?ns=docker.io`, { method: 'HEAD' })
    expect(r.status).toBe(200)
    expect(r.headers.get('docker-content-digest')).toBe(image.manifestDigest)
    expect(r.headers.get('content-type')).toBe(MediaType.ociManifest)
    expect(r.headers.get('content-length')).toBe(String(image.manifest.length))
  })

  it('GET manifest by digest and blob byte-exact', async () => {
    const m = await get(`${node.url}/v2/library/app/manifests/${image.manifestDigest}`)
    expect(sha(m.body)).toBe(image.manifestDigest)
    const b = await get(`${node.url}/v2/library/app/blobs/${image.layerDigest}?ns=docker.io`)
    expect(b.status).toBe(200)
    expect(b.headers.get('content-length')).toBe(String(image.layer.length))
    expect(sha(b.body)).toBe(image.layerDigest)
  })

  it('Range gives 206 with Content-Range; unsatisfiable gives 416 with an OCI body', async () => {
    const r = await get(`${node.url}/v2/library/app/blobs/${image.layerDigest}`, {
      headers: { range: 'bytes=100-199' },
    })
    expect(r.status).toBe(206)
    expect(r.headers.get('content-range')).toBe(`bytes 100-199/${image.layer.length}`)
    expect(r.body.equals(image.layer.subarray(100, 200))).toBe(true)
    const last = await get(`${node.url}/v2/library/app/blobs/${image.layerDigest}`, {
      headers: { range: 'bytes=-1' },
    })
    expect(last.body.equals(image.layer.subarray(-1))).toBe(true)
    const bad = await get(`${node.url}/v2/library/app/blobs/${image.layerDigest}`, {
      headers: { range: `bytes=${image.layer.length}-` },
    })
    expect(bad.status).toBe(416)
    expect(JSON.parse(bad.body.toString()).errors[0].code).toBe('RANGE_INVALID')
  })

  it('answers only with a media type the client accepts', async () => {
    const r = await get(`${node.url}/v2/library/app/manifests/v1`, {
      headers: { accept: MediaType.ociIndex },
    })
    expect(r.status).toBe(404)
    const ok = await get(`${node.url}/v2/library/app/manifests/v1`, {
      headers: { accept: `${MediaType.ociIndex}, ${MediaType.ociManifest}` },
    })
    expect(ok.status).toBe(200)
  })

  it.each([
    ['GET', '/v2/library/app/blobs/sha256:abc', 400, 'DIGEST_INVALID'],
    ['GET', '/v2/Bad/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', `/v2/library/app/blobs/sha256:${'0'.repeat(64)}`, 404, 'BLOB_UNKNOWN'],
    ['GET', '/v2/library/app/manifests/nope', 404, 'MANIFEST_UNKNOWN'],
    ['GET', '/v2/library/app/tags/list', 404, 'NOT_FOUND'],
    ['GET', '/elsewhere', 404, 'NOT_FOUND'],
    ['PUT', '/v2/library/app/manifests/v1', 405, 'UNSUPPORTED'],
    ['POST', '/v2/library/app/blobs/uploads/', 405, 'UNSUPPORTED'],
    ['DELETE', `/v2/library/app/blobs/sha256:${'0'.repeat(64)}`, 405, 'UNSUPPORTED'],
  ])('%s %s → %d %s', async (method, path, status, code) => {
    const r = await get(`${node.url}${path}`, { method })
    expect(r.status).toBe(status)
    expect(JSON.parse(r.body.toString()).errors[0].code).toBe(code)
  })
})

describe('mirror: peers', () => {
  let node: MirrorNode
  const cleanups: (() => Promise<void>)[] = []
  beforeAll(async () => {
    node = await startMirror()
  })
  afterEach(async () => {
    for (const c of cleanups.splice(0)) await c()
    node.network.providers.clear()
  })
  afterAll(() => node.close())

  it('a good peer: tag, manifest and blob come byte-exact from the peer endpoint', async () => {
    const peer = await startPeer()
    cleanups.push(peer.close)
    await node.provide('good', peer.url, peer.image)
    const head = await fetch(`${node.url}/v2/library/app/manifests/v1?ns=docker.io`, { method: 'HEAD' })
    expect(head.status).toBe(200)
    expect(head.headers.get('docker-content-digest')).toBe(peer.image.manifestDigest)
    const m = await get(`${node.url}/v2/library/app/manifests/${peer.image.manifestDigest}?ns=docker.io`)
    expect(sha(m.body)).toBe(peer.image.manifestDigest)
    const b = await get(`${node.url}/v2/library/app/blobs/${peer.image.layerDigest}?ns=docker.io`)
    expect(b.status).toBe(200)
    expect(sha(b.body)).toBe(peer.image.layerDigest)
    const text = await node.metrics.metrics()
    expect(text).toMatch(
      /kagami_requests_total\{server="mirror",kind="blob",source="peer",status="200",registry="docker.io"\} 1/,
    )
  })

  it('nobody has it: 404 with an OCI body (a miss)', async () => {
    const r = await get(`${node.url}/v2/library/app/blobs/sha256:${'1'.repeat(64)}`)
    expect(r.status).toBe(404)
    expect(JSON.parse(r.body.toString()).errors[0].code).toBe('BLOB_UNKNOWN')
  })

  it('a slow peer loses to a hedged fast one', async () => {
    const good = await startPeer()
    const slow = await misbehavingPeer((_req, res) => {
      setTimeout(() => {
        res.writeHead(200, { 'content-length': String(good.image.layer.length) })
        res.end(good.image.layer)
      }, 300)
    })
    cleanups.push(good.close, slow.close)
    await node.provide('slow', slow.url, good.image) // found first
    await node.provide('good', good.url, good.image)
    const b = await get(`${node.url}/v2/library/app/blobs/${good.image.layerDigest}`)
    expect(b.status).toBe(200)
    expect(sha(b.body)).toBe(good.image.layerDigest)
    expect(slow.hits()).toBe(1)
  })

  it('a silent peer (accepts, never answers) is skipped after the header deadline', async () => {
    const good = await startPeer()
    const silent = await misbehavingPeer(() => undefined)
    cleanups.push(good.close, silent.close)
    await node.provide('silent', silent.url, good.image)
    await node.provide('good', good.url, good.image)
    const b = await get(`${node.url}/v2/library/app/blobs/${good.image.layerDigest}`)
    expect(sha(b.body)).toBe(good.image.layerDigest)
  })

  it('only a silent peer: the request ends with 404, not a hang', async () => {
    const img = seedImage(new (await import('../../src/store/memory.js')).MemoryStore())
    const silent = await misbehavingPeer(() => undefined)
    cleanups.push(silent.close)
    await node.provide('silent', silent.url, img)
    const r = await get(`${node.url}/v2/library/app/blobs/${img.layerDigest}`)
    expect(r.status).toBe(404)
  })

  it('a flaky peer resets mid-body: resume with Range from another peer completes the body', async () => {
    const good = await startPeer()
    const half = Math.floor(good.image.layer.length / 3)
    const flaky = await misbehavingPeer((req, res) => {
      res.writeHead(200, { 'content-length': String(good.image.layer.length) })
      res.write(good.image.layer.subarray(0, half), () => setTimeout(() => req.socket.destroy(), 20))
    })
    cleanups.push(good.close, flaky.close)
    await node.provide('flaky', flaky.url, good.image) // found first, answers at once, wins the race
    await node.provide('good', good.url, good.image)
    const r = await get(`${node.url}/v2/library/app/blobs/${good.image.layerDigest}`)
    expect(r.status).toBe(200)
    expect(r.body.length).toBe(good.image.layer.length)
    expect(sha(r.body)).toBe(good.image.layerDigest)
    expect(flaky.hits()).toBe(1)
  })

  it('a corrupt peer: the client connection is aborted, never a clean 200 with bad bytes', async () => {
    const img = seedImage(new (await import('../../src/store/memory.js')).MemoryStore())
    const corrupt = await misbehavingPeer((_req, res) => {
      const bad = Buffer.from(img.layer)
      bad.writeUInt8(bad.readUInt8(bad.length - 1) ^ 0xff, bad.length - 1)
      res.writeHead(200, { 'content-length': String(bad.length) })
      res.end(bad)
    })
    cleanups.push(corrupt.close)
    await node.provide('corrupt', corrupt.url, img)
    const res = await fetch(`${node.url}/v2/library/app/blobs/${img.layerDigest}`, {
      signal: AbortSignal.timeout(10_000),
    })
    expect(res.status).toBe(200) // headers were sent before the last bytes could be checked
    await expect(res.arrayBuffer()).rejects.toThrow()
  })

  it('a corrupt manifest from a peer is never served; a good peer wins', async () => {
    const good = await startPeer()
    const corrupt = await misbehavingPeer((_req, res) => {
      res.writeHead(200, {
        'content-type': MediaType.ociManifest,
        'docker-content-digest': good.image.manifestDigest,
      })
      res.end('{"not":"it"}')
    })
    cleanups.push(good.close, corrupt.close)
    await node.provide('corrupt', corrupt.url, good.image)
    await node.provide('good', good.url, good.image)
    const r = await get(`${node.url}/v2/library/app/manifests/v1?ns=docker.io`)
    expect(r.status).toBe(200)
    expect(sha(r.body)).toBe(good.image.manifestDigest)
  })
})

// Leak check: every mirror, peer endpoint and misbehaving peer opened above is closed again. Counted by
// listening servers only: fetch()'s global keep-alive pool may hold client sockets for a few seconds.
const servers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap').length
let serversBefore = 0
beforeAll(() => {
  serversBefore = servers()
})
afterAll(async () => {
  const deadline = Date.now() + 5_000
  while (servers() > serversBefore && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  expect(servers()).toBe(serversBefore)
})
