import { writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parse as parseYaml } from 'yaml'
import { configureSchema, fromEnv, parseConfig, runSchema } from '../../src/config.js'
import { DERIVED_KEYS } from '../../scripts/gen-values-schema.js'
import { tempDir } from '../harness/index.js'
import { CHART_DIR, checkValues, helmTemplate, type K8sObject, renderChart, renderValues } from './render.js'

/**
 * What users hit in a real cluster's first week (issue 15), checked on the rendered chart, with
 * values.schema.json evaluated by a real JSON-schema validator (ajv) the way `helm install` does.
 */

interface Container {
  name: string
  image: string
  command?: string[]
  args?: string[]
  env?: { name: string; value?: string }[]
  ports?: { containerPort: number }[]
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> }
  securityContext?: Record<string, unknown>
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[]
  startupProbe?: { httpGet: { path: string; port: number } }
  livenessProbe?: { httpGet: { path: string; port: number } }
  readinessProbe?: { httpGet: { path: string; port: number } }
}
interface PodSpec {
  containers: Container[]
  initContainers?: Container[]
  volumes?: { name: string; hostPath?: { path: string; type?: string } }[]
  imagePullSecrets?: { name: string }[]
  nodeSelector?: Record<string, string>
}

const pods = (objects: K8sObject[]): { obj: K8sObject; spec: PodSpec }[] =>
  objects
    .filter((o) => ['DaemonSet', 'Job', 'Deployment', 'Pod'].includes(o.kind))
    .map((obj) => ({
      obj,
      spec: (obj as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec,
    }))

const mainDs = (objects: K8sObject[]): PodSpec =>
  pods(objects).find(
    (p) => p.obj.kind === 'DaemonSet' && p.obj.metadata.annotations?.['helm.sh/hook'] === undefined,
  )!.spec
const configOf = (objects: K8sObject[]): Record<string, unknown> =>
  parseYaml(
    (objects.find((o) => o.kind === 'ConfigMap') as unknown as { data: { 'config.yaml': string } }).data[
      'config.yaml'
    ],
  ) as Record<string, unknown>

const VALID: Record<(typeof DERIVED_KEYS)[number], string> = {
  containerdAddress: '/elsewhere/containerd.sock',
  containerdNamespace: 'default',
  containerdContentDir: '/elsewhere/content',
  mirrorAddress: '127.0.0.1:5000',
  peerAddress: '0.0.0.0:5001',
  peerAdvertiseAddress: '10.0.0.7:5001',
  p2pAddress: '{/ip4/0.0.0.0/tcp/5002}',
  bootstrap: '{dns:kagami.example:5002}',
  registries: '{https://docker.io}',
  stateDir: '/elsewhere/state',
  pskFile: '/elsewhere/psk',
}

const MI = 1024 * 1024
const bytes = (q: string): number => {
  const m = /^(\d+)(Ki|Mi|Gi)?$/.exec(q)
  if (m === null) throw new Error(`quantity ${q}`)
  return Number(m[1]) * ({ Ki: 1024, Mi: MI, Gi: 1024 * MI }[m[2] as 'Ki'] ?? 1)
}
const portOf = (address: string): number => Number(address.slice(address.lastIndexOf(':') + 1))

describe('values.schema.json evaluated with ajv', () => {
  it.each([
    ['default values', []],
    ['k3s preset', ['-f', join(CHART_DIR, 'values-k3s.yaml')]],
    ['a list set on the command line', ['--set', 'registries={https://a.example,https://b.example:5000}']],
    [
      'config settings that are not derived',
      ['--set', 'config.logLevel=debug', '--set', 'config.resolveTimeout=30ms'],
    ],
    ['no registries, mirror everything', ['--set', 'registries={}', '--set', 'allRegistries=true']],
    ['no registries, init container off', ['--set', 'registries={}', '--set', 'configure.enabled=false']],
  ])(
    'accepts %s',
    async (_name, args) => {
      await expect(checkValues(await renderValues(args))).resolves.toBeUndefined()
    },
    120_000,
  )

  it.each([
    ['an empty registry list (configure would crash-loop every node)', ['--set', 'registries={}']],
    ['a registry that is not a URL, in a list', ['--set', 'registries={https://ok.example,ftp://x}']],
    ['a bad duration', ['--set', 'config.resolveTimeout=soon']],
    ['an unknown config key', ['--set', 'config.noSuchSetting=1']],
    ['a port in use by nothing valid', ['--set', 'ports.mirror=70000']],
    ['the removed kubectl image setting', ['--set', 'cleanup.kubectlImage=docker.io/bitnami/kubectl:1.30']],
    // each with a value the daemon itself accepts: only being derived makes it wrong here
    ...DERIVED_KEYS.map((k): [string, string[]] => [
      `the derived key config.${k}`,
      ['--set', `config.${k}=${VALID[k]}`],
    ]),
  ])(
    'rejects %s',
    async (_name, args) => {
      await expect(checkValues(await renderValues(args))).rejects.toThrow(/values.schema.json rejects/)
    },
    120_000,
  )
})

describe('the rendered chart, item by item', () => {
  let tmp: { path: string; remove(): Promise<void> }
  beforeAll(async () => {
    tmp = await tempDir('chart-values')
  })
  afterAll(async () => {
    await tmp?.remove()
  })

  it('(1) uninstall: only the kagami image, no kubectl; hook pods carry pull secrets and a securityContext; the wait never blocks', async () => {
    const file = join(tmp.path, 'secrets.yaml')
    await writeFile(file, 'imagePullSecrets:\n  - name: regcred\n')
    const { objects } = await helmTemplate(['-f', file])
    const hooks = objects.filter((o) => o.metadata.annotations?.['helm.sh/hook'] === 'pre-delete')
    expect(hooks.map((o) => o.kind).sort()).toEqual([
      'DaemonSet',
      'Job',
      'Role',
      'RoleBinding',
      'ServiceAccount',
    ])
    for (const h of hooks)
      expect(h.metadata.annotations?.['helm.sh/hook-delete-policy']).toBe(
        'before-hook-creation,hook-succeeded,hook-failed',
      )
    for (const { obj, spec } of pods(objects)) {
      expect(spec.imagePullSecrets, obj.metadata.name).toEqual([{ name: 'regcred' }])
      for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
        expect(c.image, `${obj.metadata.name}/${c.name}`).toBe('ghcr.io/kagami-dev/kagami:0.1.0')
        expect(c.securityContext, `${obj.metadata.name}/${c.name}`).toEqual({
          readOnlyRootFilesystem: true,
          allowPrivilegeEscalation: false,
          capabilities: { drop: ['ALL'] },
        })
        expect(c.resources?.limits?.memory, `${obj.metadata.name}/${c.name}`).toBeDefined()
      }
    }
    const job = hooks.find((o) => o.kind === 'Job') as unknown as {
      spec: { activeDeadlineSeconds: number; backoffLimit: number; template: { spec: PodSpec } }
    }
    expect(job.spec.backoffLimit).toBe(0)
    expect(job.spec.activeDeadlineSeconds).toBe(180)
    expect(job.spec.template.spec.containers[0]?.args).toEqual([
      'cleanup-wait',
      '--daemonset=kagami-cleanup',
      '--namespace=kagami',
      '--timeout=120',
    ])
    const role = hooks.find((o) => o.kind === 'Role') as unknown as { rules: unknown[] }
    expect(role.rules).toEqual([
      { apiGroups: ['apps'], resources: ['daemonsets'], verbs: ['get'] },
      { apiGroups: [''], resources: ['pods'], verbs: ['list'] },
    ])
  }, 120_000)

  it('(2) the containerd socket’s directory is mounted, never the socket file; liveness /healthz, readiness /readyz', async () => {
    for (const preset of [[], ['-f', join(CHART_DIR, 'values-k3s.yaml')]]) {
      const { objects } = await helmTemplate(preset)
      const spec = mainDs(objects)
      const socket = String(configOf(objects).containerdAddress)
      expect(spec.volumes?.some((v) => v.hostPath?.type === 'Socket')).toBe(false)
      expect(spec.volumes?.find((v) => v.name === 'containerd-socket-dir')?.hostPath).toEqual({
        path: dirname(socket),
        type: 'Directory',
      })
      const main = spec.containers[0]!
      expect(main.volumeMounts?.find((m) => m.name === 'containerd-socket-dir')).toEqual({
        name: 'containerd-socket-dir',
        mountPath: dirname(socket),
        readOnly: true,
      })
      expect(main.livenessProbe?.httpGet.path).toBe('/healthz')
      expect(main.readinessProbe?.httpGet.path).toBe('/readyz')
    }
  }, 120_000)

  it('(3) derived settings win over `config` even when the schema is skipped (helm --skip-schema-validation)', async () => {
    const { objects } = await renderChart([
      '--set',
      'config.mirrorAddress=127.0.0.1:1',
      '--set',
      'config.containerdAddress=/elsewhere.sock',
      '--set',
      'config.stateDir=/tmp/x',
    ])
    const config = configOf(objects)
    expect(config).toMatchObject({
      mirrorAddress: '127.0.0.1:29020',
      containerdAddress: '/run/containerd/containerd.sock',
      stateDir: '/var/lib/kagami',
    })
  }, 120_000)

  it('(4) an empty registry list fails the render; the init container can be switched off', async () => {
    await expect(renderChart(['--set', 'registries={}'])).rejects.toThrow(/registries is empty/)
    const { objects } = await helmTemplate(['--set', 'configure.enabled=false', '--set', 'registries={}'])
    const spec = mainDs(objects)
    expect(spec.initContainers).toBeUndefined()
    expect(spec.volumes?.map((v) => v.name)).not.toContain('containerd-config')
    expect(configOf(objects).registries).toEqual([])
  }, 120_000)

  it('(5) every port is outside the NodePort range and the ephemeral range, and equals the CLI default', async () => {
    const { objects } = await helmTemplate()
    const spec = mainDs(objects)
    const main = spec.containers[0]!
    const ports = [
      ...(main.ports ?? []).map((p) => p.containerPort),
      main.startupProbe!.httpGet.port,
      main.livenessProbe!.httpGet.port,
      main.readinessProbe!.httpGet.port,
    ]
    for (const svc of objects.filter((o) => o.kind === 'Service'))
      for (const p of (svc as unknown as { spec: { ports: { port: number }[] } }).spec.ports)
        ports.push(p.port)
    for (const p of ports) {
      expect(p < 30000 || p > 32767, `port ${p} in the NodePort range`).toBe(true)
      expect(p).toBeLessThan(32768)
    }
    const cli = parseConfig(runSchema)
    const chart = parseConfig(runSchema, configOf(objects))
    expect(chart.mirrorAddress).toBe(cli.mirrorAddress)
    expect(chart.peerAddress).toBe(cli.peerAddress)
    expect(chart.p2pAddress).toEqual(cli.p2pAddress)
    expect(`http://127.0.0.1:${portOf(chart.mirrorAddress)}`).toBe(parseConfig(configureSchema).mirrorUrl)
  }, 120_000)

  it('(6) IPv6: listeners on both families, the host IP passed bare (kagami brackets it), a bare IPv6 accepted', async () => {
    const { objects } = await helmTemplate()
    const config = parseConfig(runSchema, configOf(objects))
    expect(config.p2pAddress).toEqual(['/ip4/0.0.0.0/tcp/29022', '/ip6/::/tcp/29022'])
    expect(config.peerAddress).toBe('[::]:29021')
    const env = mainDs(objects).containers[0]!.env ?? []
    expect(env.find((e) => e.name === 'KAGAMI_PEER_ADVERTISE_ADDRESS')?.value).toBe('$(HOST_IP)')
    for (const hostIP of ['10.0.0.7', 'fd00::7', '2001:db8::1'])
      expect(
        parseConfig(
          runSchema,
          configOf(objects),
          fromEnv(runSchema, { KAGAMI_PEER_ADVERTISE_ADDRESS: hostIP }),
        ).peerAdvertiseAddress,
      ).toBe(hostIP)
  }, 120_000)

  it('(7) requests from measured use, a startupProbe, a bounded init container, Linux nodes only', async () => {
    const { objects } = await helmTemplate()
    const spec = mainDs(objects)
    const main = spec.containers[0]!
    // bench/memory.ts on Node 24: 226 MiB RSS idle with ~1,000 keys, 330 MiB peak serving a 1 GiB blob
    // (the pod-spec e2e also checks the running daemon's RSS against the request)
    expect(bytes(main.resources!.requests!.memory!)).toBeGreaterThanOrEqual(226 * MI)
    expect(bytes(main.resources!.limits!.memory!)).toBeGreaterThanOrEqual(1.5 * 330 * MI)
    expect(main.startupProbe?.httpGet.path).toBe('/healthz')
    const init = spec.initContainers![0]!
    // `kagami configure` / `kagami cleanup` peak at ~70 MiB RSS on Node 24 (/usr/bin/time -f %M)
    expect(bytes(init.resources!.requests!.memory!)).toBeGreaterThanOrEqual(70 * MI)
    expect(bytes(init.resources!.limits!.memory!)).toBeGreaterThanOrEqual(140 * MI)
    expect(init.securityContext).toMatchObject({
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
    })
    for (const { obj, spec: s } of pods(objects))
      if (obj.kind === 'DaemonSet')
        expect(s.nodeSelector, obj.metadata.name).toEqual({ 'kubernetes.io/os': 'linux' })
  }, 120_000)
})

describe('the values used to test derived keys are valid daemon settings', () => {
  it('the daemon accepts each on its own', () => {
    for (const k of DERIVED_KEYS) {
      const raw = VALID[k]
      const value = raw.startsWith('{') ? raw.slice(1, -1).split(',') : raw
      expect(() => parseConfig(runSchema, { [k]: value }), k).not.toThrow()
    }
  })
})

describe('the private-network key (PSK)', () => {
  it('is on by default: a Secret with a random 64-hex key, mounted read-only, named in the config', async () => {
    const { objects } = await helmTemplate([])
    const secret = objects.find((o) => o.kind === 'Secret') as unknown as {
      metadata: { name: string }
      data: Record<string, string>
    }
    expect(secret.metadata.name).toBe('kagami-psk')
    expect(Buffer.from(secret.data.psk ?? '', 'base64').toString()).toMatch(/^[0-9a-f]{64}$/)
    expect(configOf(objects).pskFile).toBe('/etc/kagami/psk/psk')
    const ds = mainDs(objects)
    const mount = ds.containers[0]?.volumeMounts?.find((m) => m.name === 'psk')
    expect(mount).toEqual({ name: 'psk', mountPath: '/etc/kagami/psk', readOnly: true })
    const volume = ds.volumes?.find((v) => v.name === 'psk') as { secret?: unknown } | undefined
    expect(volume?.secret).toMatchObject({ secretName: 'kagami-psk', items: [{ key: 'psk', path: 'psk' }] })
    // a second install renders another key: one per release, never a fixed default
    const again = (await helmTemplate([])).objects.find(
      (o) => o.kind === 'Secret',
    ) as unknown as typeof secret
    expect(again.data.psk).not.toBe(secret.data.psk)
  })

  it('uses an existing Secret when named, and an open network only when switched off', async () => {
    const own = await helmTemplate(['--set', 'psk.secretName=corp-psk', '--set', 'psk.secretKey=key'])
    expect(own.objects.some((o) => o.kind === 'Secret')).toBe(false)
    const ownVolume = mainDs(own.objects).volumes?.find((v) => v.name === 'psk') as { secret?: unknown }
    expect(ownVolume.secret).toMatchObject({
      secretName: 'corp-psk',
      items: [{ key: 'key', path: 'psk' }],
    })
    const open = await helmTemplate(['--set', 'psk.enabled=false'])
    expect(open.objects.some((o) => o.kind === 'Secret')).toBe(false)
    expect(configOf(open.objects).pskFile).toBe('')
  })
})
