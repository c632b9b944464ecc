import { readFile, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:https'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { helmTemplate, type K8sObject } from '../chart/render.js'
import { run, tempDir } from '../harness/index.js'
import { type PodContainer, runPodProcess } from '../harness/pod.js'

/**
 * The uninstall hook's wait Job, run as the kubelet would run it: its container (kagami image entrypoint,
 * `cleanup-wait` args, `NODE_EXTRA_CA_CERTS`) in a private mount namespace with a service-account token
 * and CA at /var/run/secrets/kubernetes.io/serviceaccount and `KUBERNETES_SERVICE_HOST/PORT`, against a
 * stand-in API server over HTTPS on loopback whose certificate the test's CA signed.
 */
describe('uninstall hook: the rendered cleanup-wait Job against an HTTPS API stand-in', () => {
  let tmp: { path: string; remove(): Promise<void> }
  let server: Server
  const seen: { url: string; auth: string }[] = []
  /** The cleanup pods turn Ready at this time: the waiter must keep polling until then. */
  let readyAt = 0

  beforeAll(async () => {
    tmp = await tempDir('cleanup-hook')
    const d = tmp.path
    const ossl = (args: string[]): Promise<string> => run('openssl', args, { cwd: d })
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
    await ossl([
      'req',
      '-x509',
      ...ec,
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
      '-days',
      '1',
      '-subj',
      '/CN=test-ca',
    ])
    await ossl(['req', ...ec, '-keyout', 'api.key', '-out', 'api.csr', '-subj', '/CN=kubernetes'])
    await writeFile(join(d, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n')
    await ossl([
      'x509',
      '-req',
      '-in',
      'api.csr',
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      'api.crt',
      '-days',
      '1',
      '-extfile',
      'san.ext',
    ])
    server = createServer(
      { key: await readFile(join(d, 'api.key')), cert: await readFile(join(d, 'api.crt')) },
      (req, res) => {
        seen.push({ url: req.url ?? '', auth: req.headers.authorization ?? '' })
        res.setHeader('content-type', 'application/json')
        if (req.headers.authorization !== 'Bearer the-sa-token') {
          res.statusCode = 401
          return void res.end('{}')
        }
        if (req.url === '/apis/apps/v1/namespaces/kagami/daemonsets/kagami-cleanup')
          return void res.end(
            JSON.stringify({
              metadata: { generation: 1 },
              status: { observedGeneration: 1, desiredNumberScheduled: 2 },
            }),
          )
        if (req.url?.startsWith('/api/v1/namespaces/kagami/pods?labelSelector=')) {
          const ready = Date.now() >= readyAt
          return void res.end(
            JSON.stringify({
              items: ['node-a', 'node-b'].map((n) => ({
                metadata: { name: `kagami-cleanup-${n}` },
                spec: { nodeName: n },
                status: {
                  startTime: '2026-01-01T00:00:00Z',
                  conditions: [{ type: 'Ready', status: ready ? 'True' : 'False' }],
                },
              })),
            }),
          )
        }
        res.statusCode = 404
        res.end('{}')
      },
    )
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const sa = join(d, 'serviceaccount')
    await run('mkdir', ['-p', sa])
    await writeFile(join(sa, 'token'), 'the-sa-token')
    await writeFile(join(sa, 'namespace'), 'kagami')
    await writeFile(join(sa, 'ca.crt'), await readFile(join(d, 'ca.crt')))
  }, 60_000)

  afterAll(async () => {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()))
    await tmp?.remove()
  })

  it('waits over TLS with the service-account token until every node has cleaned up, then succeeds', async () => {
    const { objects } = await helmTemplate()
    readyAt = Date.now() + 4000
    const job = objects.find((o: K8sObject) => o.kind === 'Job') as unknown as {
      spec: { template: { spec: { containers: PodContainer[] } } }
    }
    const container = job.spec.template.spec.containers[0] as PodContainer
    const out = await runPodProcess({
      container,
      volumes: [],
      sources: {},
      fieldRefs: {},
      kubelet: {
        mounts: [
          {
            source: join(tmp.path, 'serviceaccount'),
            target: '/var/run/secrets/kubernetes.io/serviceaccount',
            readOnly: true,
          },
        ],
        env: {
          KUBERNETES_SERVICE_HOST: '127.0.0.1',
          KUBERNETES_SERVICE_PORT: String((server.address() as AddressInfo).port),
        },
      },
      etcHosts: [],
      scratch: join(tmp.path, 'ns-wait'),
      logPath: join(tmp.path, 'wait.log'),
    })
    expect(out).toBe('cleaned up on 2 node(s)\n')
    expect(Date.now()).toBeGreaterThanOrEqual(readyAt) // it did not finish before the pods were Ready
    expect(seen.length).toBeGreaterThanOrEqual(4)
    expect(new Set(seen.map((s) => s.auth))).toEqual(new Set(['Bearer the-sa-token']))
  })
})
