import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { waitForCleanup } from '../../src/cleanup-wait.js'

/**
 * The uninstall hook's waiter against a stand-in Kubernetes API on loopback (real HTTP): it must wait for
 * every node that runs pods, skip nodes that never start the pod (NotReady), and never fail the uninstall.
 */
interface FakePod {
  node: string
  started: boolean
  ready: boolean
}

async function fakeApi(state: {
  desired: number
  pods: FakePod[]
}): Promise<{ url: string; server: Server; auth: string[] }> {
  const auth: string[] = []
  const server = createServer((req, res) => {
    auth.push(req.headers.authorization ?? '')
    res.setHeader('content-type', 'application/json')
    if (req.url === '/apis/apps/v1/namespaces/kagami/daemonsets/kagami-cleanup') {
      res.end(
        JSON.stringify({
          metadata: { generation: 1 },
          status: { observedGeneration: 1, desiredNumberScheduled: state.desired },
        }),
      )
    } else if (
      req.url ===
      `/api/v1/namespaces/kagami/pods?labelSelector=${encodeURIComponent('app.kubernetes.io/name=kagami-cleanup')}`
    ) {
      res.end(
        JSON.stringify({
          items: state.pods.map((p) => ({
            metadata: { name: `kagami-cleanup-${p.node}` },
            spec: { nodeName: p.node },
            status: {
              ...(p.started ? { startTime: '2026-01-01T00:00:00Z' } : {}),
              conditions: [{ type: 'Ready', status: p.ready ? 'True' : 'False' }],
            },
          })),
        }),
      )
    } else {
      res.statusCode = 404
      res.end('{}')
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, auth }
}

describe('kagami cleanup-wait', () => {
  let server: Server | undefined
  afterEach(async () => {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()))
    server = undefined
  })
  const base = { token: 'secret-token', namespace: 'kagami', daemonSet: 'kagami-cleanup', pollMs: 20 }
  const log: string[] = []
  const components = { fetch, log: (l: string) => log.push(l) }

  it('waits until every node’s cleanup pod is Ready, with the service-account token', async () => {
    const state = { desired: 2, pods: [{ node: 'a', started: true, ready: true }] as FakePod[] }
    const api = await fakeApi(state)
    server = api.server
    const done = waitForCleanup(components, { ...base, apiUrl: api.url, timeoutMs: 10_000 })
    setTimeout(() => state.pods.push({ node: 'b', started: true, ready: false }), 100)
    setTimeout(() => (state.pods[1]!.ready = true), 300)
    const r = await done
    expect(r).toEqual({ done: ['a', 'b'], skipped: [], pending: [], timedOut: false })
    expect(new Set(api.auth)).toEqual(new Set(['Bearer secret-token']))
  })

  it('skips a node whose kubelet never starts the pod (NotReady), instead of blocking', async () => {
    const api = await fakeApi({
      desired: 2,
      pods: [
        { node: 'a', started: true, ready: true },
        { node: 'down', started: false, ready: false },
      ],
    })
    server = api.server
    const r = await waitForCleanup(components, {
      ...base,
      apiUrl: api.url,
      timeoutMs: 10_000,
      notStartedGraceMs: 200,
    })
    expect(r).toEqual({ done: ['a'], skipped: ['down'], pending: [], timedOut: false })
  })

  it('gives up at the deadline and reports what is left, without throwing (the uninstall goes on)', async () => {
    const api = await fakeApi({ desired: 1, pods: [{ node: 'stuck', started: true, ready: false }] })
    server = api.server
    const r = await waitForCleanup(components, { ...base, apiUrl: api.url, timeoutMs: 300 })
    expect(r).toEqual({ done: [], skipped: [], pending: ['stuck'], timedOut: true })
  })

  it('an API that does not answer is retried until the deadline, then it gives up', async () => {
    const r = await waitForCleanup(components, { ...base, apiUrl: 'http://127.0.0.1:1', timeoutMs: 300 })
    expect(r.timedOut).toBe(true)
    expect(log.some((l) => l.startsWith('cleanup-wait:'))).toBe(true)
    expect(log.join('\n')).not.toContain('secret-token')
  })
})
