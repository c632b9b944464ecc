import { request } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { waitFor } from '../harness/index.js'
import { type MirrorNode, seedImage, startMirror, type TestImage } from './fixtures.js'

/** Request accounting at the edges: a client that leaves mid-body, and the first byte of a response. */
describe('registry request metrics', () => {
  let node: MirrorNode
  let image: TestImage
  beforeAll(async () => {
    node = await startMirror()
    image = seedImage(node.store, 'docker.io/library/big:v1', 64 * 1024 * 1024)
  })
  afterAll(async () => {
    await node?.close()
  })

  const value = async (name: string, labels: Record<string, string>): Promise<number | undefined> =>
    (await node.metrics.getSingleMetric(name)?.get())?.values.find((v) =>
      Object.entries(labels).every(([k, l]) => v.labels[k] === l),
    )?.value

  it('a client that goes away mid-body is counted once, with 0 bytes, and leaves nothing in flight', async () => {
    const url = new URL(`${node.url}/v2/library/big/blobs/${image.layerDigest}?ns=docker.io`)
    await new Promise<void>((resolve, reject) => {
      const req = request(url, (res) => {
        expect(res.statusCode).toBe(200)
        res.once('data', () => {
          req.destroy() // containerd cancelling a pull
          resolve()
        })
      })
      req.on('error', (err) => (err.message.includes('socket hang up') ? undefined : reject(err)))
      req.end()
    })
    const labels = { server: 'mirror', kind: 'blob', source: 'local', status: '200', registry: 'docker.io' }
    await waitFor(async () => ((await value('kagami_requests_total', labels)) === 1 ? true : undefined), {
      timeoutMs: 10_000,
      what: 'the aborted request to be counted',
    })
    expect(await value('kagami_inflight_requests', { server: 'mirror' })).toBe(0)
    expect(
      await value('kagami_bytes_served_total', { server: 'mirror', source: 'local', registry: 'docker.io' }),
    ).toBe(0)
    // headers and the first chunk went out before the client left: one TTFB observation
    const text = await node.metrics.metrics()
    expect(text).toMatch(
      /^kagami_request_ttfb_seconds_count\{server="mirror",kind="blob",source="local"\} 1$/m,
    )
  })

  it('a whole body counts its bytes', async () => {
    const res = await fetch(`${node.url}/v2/library/big/manifests/v1?ns=docker.io`)
    expect(Buffer.from(await res.arrayBuffer()).length).toBe(image.manifest.length)
    await waitFor(
      async () =>
        (await value('kagami_bytes_served_total', {
          server: 'mirror',
          source: 'local',
          registry: 'docker.io',
        })) === image.manifest.length
          ? true
          : undefined,
      { timeoutMs: 5_000, what: 'manifest bytes counted' },
    )
    expect(await value('kagami_inflight_requests', { server: 'mirror' })).toBe(0)
  })
})
