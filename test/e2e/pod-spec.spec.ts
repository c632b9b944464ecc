import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parse as parseYaml } from 'yaml'
import { CHART_DIR, helmTemplate, type K8sObject } from '../chart/render.js'
import {
  buildImage,
  type BuiltImage,
  type ContainerdHandle,
  freePort,
  type ManagedProcess,
  pushImage,
  type RegistryHandle,
  startContainerd,
  startRegistry,
  tempDir,
  waitFor,
} from '../harness/index.js'
import {
  type PodContainer,
  type PodProcessInit,
  type PodVolume,
  runPodProcess,
  startPodProcess,
} from '../harness/pod.js'

/**
 * The rendered DaemonSet, run as users run it: the chart is rendered (default values and the k3s preset),
 * and its init and main containers run as real processes with exactly their command, args, env and
 * hostPath mounts, each in a private mount namespace that shows the pod's paths (/run/containerd,
 * /etc/containerd/certs.d, …) bound to a real containerd's directories. Ports are free ones (the machine
 * is shared) and `status.hostIP` is 127.0.0.1; nothing else is changed.
 */

interface PodSpec {
  initContainers?: PodContainer[]
  containers: PodContainer[]
  volumes: PodVolume[]
}

const podSpec = (objects: K8sObject[], hook: boolean): PodSpec => {
  const ds = objects.find(
    (o) => o.kind === 'DaemonSet' && (o.metadata.annotations?.['helm.sh/hook'] !== undefined) === hook,
  )
  if (ds === undefined) throw new Error(`no ${hook ? 'hook ' : ''}DaemonSet rendered`)
  return (ds as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec
}

async function getStatus(url: string): Promise<number> {
  const res = await fetch(url, { signal: AbortSignal.timeout(3000) })
  await res.arrayBuffer()
  return res.status
}

async function requestsAtMirror(mirror: string): Promise<number> {
  const text = await (await fetch(`${mirror}/metrics`, { signal: AbortSignal.timeout(3000) })).text()
  return text
    .split('\n')
    .filter((l) => l.startsWith('kagami_requests_total{') && l.includes('server="mirror"'))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0)
}

describe.each([
  ['default values', [] as string[]],
  ['k3s preset', ['-f', join(CHART_DIR, 'values-k3s.yaml')]],
])(
  'pod spec e2e (%s): the rendered DaemonSet run as processes against a real containerd',
  (_name, preset) => {
    let tmp: { path: string; remove(): Promise<void> }
    let registry: RegistryHandle
    let containerd: ContainerdHandle
    let image: BuiltImage
    let ref: string
    let daemon: ManagedProcess | undefined
    let spec: PodSpec
    let hook: PodSpec
    let certsDir: string
    let userHostsToml: string
    let mirror: string
    let base: Omit<PodProcessInit, 'container' | 'scratch' | 'logPath'>

    beforeAll(async () => {
      tmp = await tempDir('pod-spec')
      registry = await startRegistry()
      image = await buildImage({ dir: join(tmp.path, 'image'), layers: [300_000, 50_000] })
      ref = `${registry.host}/pod/app:v1`
      await pushImage(image.dir, ref)
      containerd = await startContainerd({ name: 'pod-spec' })

      const [mirrorPort, peerPort, p2pPort] = [await freePort(), await freePort(), await freePort()]
      mirror = `http://127.0.0.1:${mirrorPort}`
      const { objects } = await helmTemplate([
        ...preset,
        '--set',
        `ports.mirror=${mirrorPort}`,
        '--set',
        `ports.peer=${peerPort}`,
        '--set',
        `ports.p2p=${p2pPort}`,
        '--set',
        `registries={${registry.url}}`,
      ])
      spec = podSpec(objects, false)
      hook = podSpec(objects, true)
      const cm = objects.find((o) => o.kind === 'ConfigMap') as unknown as { data: Record<string, string> }

      // the node's files: containerd's socket dir and content dir are the real containerd's; certs.d holds a
      // hosts.toml the user wrote before installing kagami
      certsDir = join(tmp.path, 'node', 'certs.d')
      await mkdir(join(certsDir, registry.host), { recursive: true })
      userHostsToml = `# the user's own file\nserver = "${registry.url}"\n\n[host."${registry.url}"]\n  capabilities = ["pull", "resolve"]\n`
      await writeFile(join(certsDir, registry.host, 'hosts.toml'), userHostsToml)
      const configMapDir = join(tmp.path, 'node', 'configmap')
      await mkdir(configMapDir, { recursive: true })
      for (const [k, v] of Object.entries(cm.data)) await writeFile(join(configMapDir, k), v)
      const stateDir = join(tmp.path, 'node', 'state')
      await mkdir(stateDir, { recursive: true })
      const volumes = [...spec.volumes, ...hook.volumes]
      // Each hostPath stands in for the node path the config file and the init container use: the real
      // containerd's socket (its directory, or the socket file itself as the chart mounted it before), its
      // content dir, a certs.d and a state dir.
      const config = parseYaml(cm.data['config.yaml'] as string) as {
        containerdAddress: string
        containerdContentDir: string
        stateDir: string
      }
      const args = spec.initContainers?.[0]?.args ?? []
      const configPath = args[args.indexOf('--config-path') + 1]
      const sources: Record<string, string> = { config: configMapDir }
      for (const v of volumes) {
        const path = v.hostPath?.path
        if (path === undefined) continue
        if (path === config.containerdAddress) sources[v.name] = containerd.address
        else if (path === dirname(config.containerdAddress)) sources[v.name] = dirname(containerd.address)
        else if (path === config.containerdContentDir) sources[v.name] = containerd.contentDir
        else if (path === configPath) sources[v.name] = certsDir
        else if (path === config.stateDir) sources[v.name] = stateDir
        else throw new Error(`hostPath ${path} is none of the paths kagami is configured with`)
      }
      base = {
        volumes,
        sources,
        fieldRefs: { 'status.hostIP': '127.0.0.1' },
        // the headless Service's name, as cluster DNS answers it for this (only) node
        etcHosts: [
          `127.0.0.1 kagami-bootstrap.kagami.svc.cluster.local`,
          `::1 kagami-bootstrap.kagami.svc.cluster.local`,
        ],
      }
    }, 240_000)

    afterAll(async () => {
      await daemon?.stop(10_000)
      await containerd?.destroy()
      await registry?.destroy()
      await tmp?.remove()
    })

    const run = (container: PodContainer, name: string): PodProcessInit => ({
      ...base,
      container,
      scratch: join(tmp.path, `ns-${name}`),
      logPath: join(tmp.path, `${name}.log`),
    })

    it('the init container writes hosts.toml, the daemon starts Ready, and a real ctr pull goes through the mirror', async () => {
      const init = spec.initContainers?.[0]
      expect(init?.name).toBe('configure')
      await runPodProcess(run(init as PodContainer, 'configure'))
      const written = await readFile(join(certsDir, registry.host, 'hosts.toml'), 'utf8')
      expect(written).toContain(`[host."${mirror}"]`)
      expect(await readdir(join(certsDir, registry.host))).toContain('hosts.toml.kagami-backup')

      daemon = await startPodProcess(run(spec.containers[0] as PodContainer, 'kagami'))
      const d = daemon
      await waitFor(async () => (await getStatus(`${mirror}/readyz`)) === 200, {
        timeoutMs: 60_000,
        what: '/readyz',
        describe: () => d.tail(),
      })
      const log = await d.tail(50)
      expect(log).toMatch(/"msg":"kagami started"/)
      expect(log).toMatch(/"version":"\d+\.\d+\.\d+"/)

      const before = await requestsAtMirror(mirror)
      await containerd.pull(ref, { hostsDir: certsDir })
      expect(await containerd.images()).toContain(ref)
      // containerd asked the mirror first: the hosts.toml the init container wrote is the one in use
      expect(await requestsAtMirror(mirror)).toBeGreaterThan(before)
    })

    const manifestUrl = (): string =>
      `${mirror}/v2/pod/app/manifests/v1?ns=${encodeURIComponent(registry.host)}`

    it('a containerd restart: the daemon reconnects and serves the image from containerd within 10 s', async () => {
      await waitFor(async () => (await getStatus(manifestUrl())) === 200, {
        timeoutMs: 20_000,
        what: 'the pulled image served from the local store',
      })
      await containerd.restart()
      const d = daemon as ManagedProcess
      await waitFor(
        async () => (await getStatus(`${mirror}/readyz`)) === 200 && (await getStatus(manifestUrl())) === 200,
        { timeoutMs: 10_000, what: 'ready and serving after a containerd restart', describe: () => d.tail() },
      )
    })

    it('containerd gone for good: /readyz turns not-ready within 10 s, /healthz stays ok', async () => {
      await containerd.stop()
      const d = daemon as ManagedProcess
      await waitFor(async () => (await getStatus(`${mirror}/readyz`)) === 503, {
        timeoutMs: 10_000,
        what: '/readyz 503 with containerd down',
        describe: () => d.tail(),
      })
      expect(await getStatus(`${mirror}/healthz`)).toBe(200)
    })

    it('uninstall: the cleanup hook’s container restores the user’s hosts.toml byte for byte', async () => {
      await daemon?.stop(10_000)
      daemon = undefined
      const cleanup = hook.initContainers?.[0]
      expect(cleanup?.name).toBe('cleanup')
      await runPodProcess(run(cleanup as PodContainer, 'cleanup'))
      expect(await readFile(join(certsDir, registry.host, 'hosts.toml'), 'utf8')).toBe(userHostsToml)
      expect(await readdir(join(certsDir, registry.host))).toEqual(['hosts.toml'])
    })
  },
)
