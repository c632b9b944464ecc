import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { parse as parseYaml } from 'yaml'
import { describe, expect, it } from 'vitest'
import { configureSchema, fields, parseConfig, runSchema } from '../../src/config.js'
import { renderValuesSchema } from '../../scripts/gen-values-schema.js'
import { CHART_DIR, helmTemplate, type K8sObject } from './render.js'

/** Validates an object against the Kubernetes OpenAPI schema of its kind (kubernetes-models). */
async function validate(obj: K8sObject): Promise<void> {
  const group = obj.apiVersion.includes('/') ? obj.apiVersion : `core/${obj.apiVersion}`
  const [g, v] = group.split('/') as [string, string]
  const path = g === 'core' ? `kubernetes-models/${v}/${obj.kind}` : `kubernetes-models/${g}/${v}/${obj.kind}`
  const mod = (await import(path)) as Record<string, new (o: unknown) => { validate(): void }>
  const Model = mod[obj.kind] ?? mod.default
  if (Model === undefined) throw new Error(`no model for ${obj.apiVersion} ${obj.kind}`)
  new Model(obj).validate()
}

interface Container {
  name: string
  args?: string[]
  command?: string[]
  env?: { name: string; value?: string }[]
  volumeMounts?: { name: string; mountPath: string }[]
  livenessProbe?: { httpGet: { port: number; path: string; host?: string } }
  readinessProbe?: { httpGet: { port: number; path: string; host?: string } }
}
interface PodSpec {
  hostNetwork?: boolean
  containers: Container[]
  initContainers?: Container[]
  volumes: { name: string; hostPath?: { path: string }; configMap?: { name: string } }[]
  tolerations?: unknown[]
  priorityClassName?: string
}

const byKind = (objects: K8sObject[], kind: string, name?: string): K8sObject[] =>
  objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name))

function mainDaemonSet(objects: K8sObject[]): { spec: { template: { spec: PodSpec } } } {
  const ds = byKind(objects, 'DaemonSet').find((o) => o.metadata.annotations?.['helm.sh/hook'] === undefined)
  if (ds === undefined) throw new Error('no DaemonSet rendered')
  return ds as unknown as { spec: { template: { spec: PodSpec } } }
}

const RUN_FLAGS = new Set(fields(runSchema).map((f) => f.flag))
const CONFIGURE_FLAGS = new Set(fields(configureSchema).map((f) => f.flag))
const ENV_NAMES = new Set([...fields(runSchema), ...fields(configureSchema)].map((f) => f.env))

/** Every `--flag` a container passes to kagami must exist on that subcommand. */
function checkKagamiArgs(c: Container): void {
  const args = c.args ?? []
  if (c.command !== undefined) return // not the kagami entrypoint (e.g. the cleanup hook's idle container)
  const sub = args[0]
  expect(['run', 'configure', 'cleanup', 'cleanup-wait', 'status']).toContain(sub)
  const allowed =
    sub === 'run'
      ? new Set([...RUN_FLAGS, '--config'])
      : sub === 'configure'
        ? new Set([...CONFIGURE_FLAGS, '--config'])
        : sub === 'cleanup-wait'
          ? new Set(['--daemonset', '--namespace', '--timeout'])
          : new Set(['--config-path', '--mirror-address'])
  for (const a of args.filter((x) => x.startsWith('--')))
    expect(allowed, `${sub} ${a}`).toContain(a.split('=')[0])
}

function hostPaths(spec: PodSpec): Map<string, string> {
  return new Map(spec.volumes.filter((v) => v.hostPath !== undefined).map((v) => [v.name, v.hostPath!.path]))
}

describe('Helm chart (rendered with Go text/template + sprig, validated against Kubernetes schemas)', () => {
  it.each([
    ['default values', []],
    ['k3s preset', ['-f', join(CHART_DIR, 'values-k3s.yaml')]],
    [
      'serviceMonitor, custom registries, psk, no cleanup',
      [
        '--set',
        'serviceMonitor.enabled=true',
        '--set',
        'psk.secretName=kagami-psk',
        '--set',
        'cleanup.enabled=false',
        '--set',
        'allRegistries=true',
      ],
    ],
  ])(
    '%s: every object is valid and every kagami flag exists in the CLI',
    async (_name, args) => {
      const { objects, notes } = await helmTemplate(args)
      expect(notes).toMatch(/kagami status/)
      expect(objects.length).toBeGreaterThan(3)
      for (const obj of objects) {
        if (obj.apiVersion === 'monitoring.coreos.com/v1') {
          // a CRD kubernetes-models does not ship: check its shape
          expect(obj.kind).toBe('ServiceMonitor')
          expect(
            (obj as unknown as { spec: { endpoints: { port: string }[] } }).spec.endpoints[0]?.port,
          ).toBe('metrics')
          continue
        }
        await validate(obj)
      }
      for (const ds of byKind(objects, 'DaemonSet')) {
        const spec = (ds as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec
        for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
          checkKagamiArgs(c)
          for (const e of c.env ?? []) if (e.name.startsWith('KAGAMI_')) expect(ENV_NAMES).toContain(e.name)
        }
      }
      // the config file is valid input for `kagami run --config`
      const cm = byKind(objects, 'ConfigMap')[0] as unknown as { data: { 'config.yaml': string } }
      const config = parseConfig(runSchema, parseYaml(cm.data['config.yaml']) as Record<string, unknown>)
      expect(config.mirrorAddress).toBe('127.0.0.1:29020')
      expect(config.bootstrap).toEqual(['dns:kagami-bootstrap.kagami.svc.cluster.local:29022'])
      if (args.includes('serviceMonitor.enabled=true'))
        expect(byKind(objects, 'ServiceMonitor')).toHaveLength(1)
      else expect(byKind(objects, 'ServiceMonitor')).toHaveLength(0)
    },
    240_000,
  )

  it('default values mount exactly the paths the CLI uses by default; host network; probes on the mirror', async () => {
    const { objects } = await helmTemplate()
    const spec = mainDaemonSet(objects).spec.template.spec
    expect(spec.hostNetwork).toBe(true)
    expect(spec.priorityClassName).toBe('system-node-critical')
    expect(spec.tolerations).toEqual([{ operator: 'Exists' }])
    const defaults = parseConfig(runSchema)
    const paths = hostPaths(spec)
    expect(paths.get('containerd-socket-dir')).toBe(dirname(defaults.containerdAddress))
    expect(paths.get('containerd-content')).toBe(defaults.containerdContentDir)
    expect(paths.get('state')).toBe(defaults.stateDir)
    expect(paths.get('containerd-config')).toBe(parseConfig(configureSchema).configPath)
    const main = spec.containers[0]!
    const mounts = new Map((main.volumeMounts ?? []).map((m) => [m.name, m.mountPath]))
    expect(mounts.get('containerd-socket-dir')).toBe(dirname(defaults.containerdAddress))
    expect(mounts.get('containerd-content')).toBe(defaults.containerdContentDir)
    expect(main.livenessProbe?.httpGet).toEqual({ host: '127.0.0.1', path: '/healthz', port: 29020 })
    expect(main.readinessProbe?.httpGet).toEqual({ host: '127.0.0.1', path: '/readyz', port: 29020 })
    const init = spec.initContainers![0]!
    expect(init.args).toEqual([
      'configure',
      '--config-path',
      parseConfig(configureSchema).configPath,
      '--mirror-url',
      'http://127.0.0.1:29020',
      '--registries',
      'https://docker.io',
      'https://ghcr.io',
      'https://quay.io',
      'https://registry.k8s.io',
    ])
    // a headless Service publishes not-ready pods for DNS bootstrap
    const svc = byKind(objects, 'Service', 'kagami-bootstrap')[0] as unknown as {
      spec: { clusterIP: string; publishNotReadyAddresses: boolean }
    }
    expect(svc.spec).toMatchObject({ clusterIP: 'None', publishNotReadyAddresses: true })
  }, 120_000)

  it('the k3s preset mounts k3s’s socket, content dir and certs.d, and the config file points at them', async () => {
    const { objects } = await helmTemplate(['-f', join(CHART_DIR, 'values-k3s.yaml')])
    const paths = hostPaths(mainDaemonSet(objects).spec.template.spec)
    expect(paths.get('containerd-socket-dir')).toBe('/run/k3s/containerd')
    expect(paths.get('containerd-content')).toBe(
      '/var/lib/rancher/k3s/agent/containerd/io.containerd.content.v1.content',
    )
    expect(paths.get('containerd-config')).toBe('/var/lib/rancher/k3s/agent/etc/containerd/certs.d')
    const cm = byKind(objects, 'ConfigMap')[0] as unknown as { data: { 'config.yaml': string } }
    const config = parseConfig(runSchema, parseYaml(cm.data['config.yaml']) as Record<string, unknown>)
    expect(config.containerdAddress).toBe('/run/k3s/containerd/containerd.sock')
  }, 120_000)

  it('values.schema.json is generated from the config schema and up to date', async () => {
    expect(await readFile(join(CHART_DIR, 'values.schema.json'), 'utf8')).toBe(renderValuesSchema())
  })

  it('the default values are accepted by values.schema.json’s config rules', async () => {
    const values = parseYaml(await readFile(join(CHART_DIR, 'values.yaml'), 'utf8')) as {
      config: Record<string, unknown>
    }
    expect(() => parseConfig(runSchema, values.config)).not.toThrow()
  })
})
