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

// what containerd accepts when it resolves a tag (the registry hides an index from a client that does not)
const ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ')

async function getStatus(url: string): Promise<number> {
  const res = await fetch(url, { headers: { accept: ACCEPT }, signal: AbortSignal.timeout(3000) })
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

const BOOTSTRAP_NAME = 'kagami-bootstrap.kagami.svc.cluster.local'

interface PodNode {
  name: string
  containerd: ContainerdHandle
  certsDir: string
  /** The hosts.toml the user had before kagami (for the registry), byte for byte. */
  userHostsToml: string
  mirror: string
  spec: PodSpec
  hook: PodSpec
  /** What runs one of the pod's containers on this node. */
  container(container: PodContainer, name: string): PodProcessInit
  daemon?: ManagedProcess
}

/**
 * One "node": a real containerd, a certs.d holding the user's own hosts.toml, a state dir, and the chart
 * rendered with helm's steps (values checked against values.schema.json), free ports and the registry.
 */
const releaseSecrets = new Map<string, Record<string, string>>()

async function podNode(init: {
  name: string
  dir: string
  preset: string[]
  registry: RegistryHandle
  hostIP: string
  /** The bootstrap name's addresses, as cluster DNS would answer them. */
  bootstrapIPs: string[]
  p2pPort?: number
}): Promise<PodNode> {
  const containerd = await startContainerd({ name: init.name })
  const [mirrorPort, peerPort] = [await freePort(), await freePort()]
  const p2pPort = init.p2pPort ?? (await freePort())
  const { objects } = await helmTemplate([
    ...init.preset,
    '--set',
    `ports.mirror=${mirrorPort}`,
    '--set',
    `ports.peer=${peerPort}`,
    '--set',
    `ports.p2p=${p2pPort}`,
    '--set',
    `registries={${init.registry.url}}`,
  ])
  const spec = podSpec(objects, false)
  const hook = podSpec(objects, true)
  const cm = objects.find((o) => o.kind === 'ConfigMap') as unknown as { data: Record<string, string> }

  const certsDir = join(init.dir, 'certs.d')
  await mkdir(join(certsDir, init.registry.host), { recursive: true })
  const userHostsToml = `# the user's own file\nserver = "${init.registry.url}"\n\n[host."${init.registry.url}"]\n  capabilities = ["pull", "resolve"]\n`
  await writeFile(join(certsDir, init.registry.host, 'hosts.toml'), userHostsToml)
  const configMapDir = join(init.dir, 'configmap')
  await mkdir(configMapDir, { recursive: true })
  for (const [k, v] of Object.entries(cm.data)) await writeFile(join(configMapDir, k), v)
  const stateDir = join(init.dir, 'state')
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
  // Secret volumes (the PSK): the Secret the chart rendered, written out as the kubelet projects it. One
  // release has one Secret (helm's lookup keeps it): every node of a preset gets the first render's data.
  for (const o of objects.filter((x) => x.kind === 'Secret')) {
    const key = `${init.preset.join(' ')} ${(o.metadata as { name: string }).name}`
    const first = releaseSecrets.get(key)
    if (first === undefined) releaseSecrets.set(key, (o as unknown as { data: Record<string, string> }).data)
    else (o as unknown as { data: Record<string, string> }).data = first
  }
  for (const v of volumes) {
    const ref = (v as { secret?: { secretName: string; items?: { key: string; path: string }[] } }).secret
    if (ref === undefined) continue
    const secret = objects.find(
      (o) => o.kind === 'Secret' && (o.metadata as { name: string }).name === ref.secretName,
    ) as unknown as { data: Record<string, string> } | undefined
    if (secret === undefined) throw new Error(`the chart mounts Secret ${ref.secretName} but renders none`)
    const dir = join(init.dir, `secret-${v.name}`)
    await mkdir(dir, { recursive: true })
    for (const item of ref.items ?? Object.keys(secret.data).map((key) => ({ key, path: key })))
      await writeFile(join(dir, item.path), Buffer.from(secret.data[item.key] ?? '', 'base64'), {
        mode: 0o400,
      })
    sources[v.name] = dir
  }
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
  return {
    name: init.name,
    containerd,
    certsDir,
    userHostsToml,
    mirror: `http://127.0.0.1:${mirrorPort}`,
    spec,
    hook,
    container: (container, name) => ({
      container,
      volumes,
      sources,
      fieldRefs: { 'status.hostIP': init.hostIP },
      etcHosts: init.bootstrapIPs.map((ip) => `${ip} ${BOOTSTRAP_NAME}`),
      scratch: join(init.dir, `ns-${name}`),
      logPath: join(init.dir, `${name}.log`),
    }),
  }
}

async function startDaemon(node: PodNode): Promise<ManagedProcess> {
  const d = await startPodProcess(node.container(node.spec.containers[0] as PodContainer, 'kagami'))
  node.daemon = d
  await waitFor(async () => (await getStatus(`${node.mirror}/readyz`)) === 200, {
    timeoutMs: 60_000,
    what: `${node.name} /readyz`,
    describe: () => d.tail(),
  })
  return d
}

describe.each([
  ['default values', [] as string[]],
  ['k3s preset', ['-f', join(CHART_DIR, 'values-k3s.yaml')]],
])(
  'pod spec e2e (%s): the rendered DaemonSet run as processes against a real containerd',
  (_name, preset) => {
    let tmp: { path: string; remove(): Promise<void> }
    let registry: RegistryHandle
    let image: BuiltImage
    let ref: string
    let node: PodNode

    beforeAll(async () => {
      tmp = await tempDir('pod-spec')
      registry = await startRegistry()
      image = await buildImage({ dir: join(tmp.path, 'image'), layers: [300_000, 50_000] })
      ref = `${registry.host}/pod/app:v1`
      await pushImage(image.dir, ref)
      // the headless Service's name resolves to this (only) node
      node = await podNode({
        name: 'node',
        dir: join(tmp.path, 'node'),
        preset,
        registry,
        hostIP: '127.0.0.1',
        bootstrapIPs: ['127.0.0.1', '::1'],
      })
    }, 240_000)

    afterAll(async () => {
      await node?.daemon?.stop(10_000)
      await node?.containerd.destroy()
      await registry?.destroy()
      await tmp?.remove()
    })

    it('the init container writes hosts.toml, the daemon starts Ready, and a real ctr pull goes through the mirror', async () => {
      const init = node.spec.initContainers?.[0]
      expect(init?.name).toBe('configure')
      await runPodProcess(node.container(init as PodContainer, 'configure'))
      const written = await readFile(join(node.certsDir, registry.host, 'hosts.toml'), 'utf8')
      expect(written).toContain(`[host."${node.mirror}"]`)
      expect(await readdir(join(node.certsDir, registry.host))).toContain('hosts.toml.kagami-backup')

      const d = await startDaemon(node)
      const log = await d.tail(50)
      expect(log).toMatch(/"msg":"kagami started"/)
      expect(log).toMatch(/"version":"\d+\.\d+\.\d+"/)

      const metrics = await (await fetch(`${node.mirror}/metrics`)).text()
      // the daemon runs on Node 24, as the image does
      expect(metrics).toMatch(/^kagami_build_info\{version="\d+\.\d+\.\d+",node="v24\.\d+\.\d+"\} 1$/m)

      // the chart's memory request covers what the running daemon uses (idle, one image)
      const rss =
        Number(/VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${d.child.pid}/status`, 'utf8'))?.[1]) * 1024
      const request = node.spec.containers[0]?.resources?.requests?.memory ?? ''
      expect(request).toMatch(/^\d+Mi$/)
      expect(rss).toBeLessThan(Number.parseInt(request) * 1024 * 1024)

      const before = await requestsAtMirror(node.mirror)
      await node.containerd.pull(ref, { hostsDir: node.certsDir })
      expect(await node.containerd.images()).toContain(ref)
      // containerd asked the mirror first: the hosts.toml the init container wrote is the one in use
      expect(await requestsAtMirror(node.mirror)).toBeGreaterThan(before)
    })

    // by digest: what the node holds is served from containerd (a tag may be checked upstream first)
    const manifestUrl = (): string =>
      `${node.mirror}/v2/pod/app/manifests/${image.root.digest}?ns=${encodeURIComponent(registry.host)}`

    it('a containerd restart: the daemon reconnects and serves the image from containerd within 10 s', async () => {
      await waitFor(async () => (await getStatus(manifestUrl())) === 200, {
        timeoutMs: 20_000,
        what: 'the pulled image served from the local store',
        describe: async () =>
          `${await node.daemon!.tail()}\n${manifestUrl()} → ${await getStatus(manifestUrl()).catch(String)}`,
      })
      await node.containerd.restart()
      const d = node.daemon as ManagedProcess
      await waitFor(
        async () =>
          (await getStatus(`${node.mirror}/readyz`)) === 200 && (await getStatus(manifestUrl())) === 200,
        { timeoutMs: 10_000, what: 'ready and serving after a containerd restart', describe: () => d.tail() },
      )
    })

    it('containerd gone for good: /readyz turns not-ready within 10 s, /healthz stays ok', async () => {
      await node.containerd.stop()
      const d = node.daemon as ManagedProcess
      await waitFor(async () => (await getStatus(`${node.mirror}/readyz`)) === 503, {
        timeoutMs: 10_000,
        what: '/readyz 503 with containerd down',
        describe: () => d.tail(),
      })
      expect(await getStatus(`${node.mirror}/healthz`)).toBe(200)
    })

    it('uninstall: the cleanup hook’s container restores the user’s hosts.toml byte for byte', async () => {
      await node.daemon?.stop(10_000)
      node.daemon = undefined
      const cleanup = node.hook.initContainers?.[0]
      expect(cleanup?.name).toBe('cleanup')
      await runPodProcess(node.container(cleanup as PodContainer, 'cleanup'))
      expect(await readFile(join(node.certsDir, registry.host, 'hosts.toml'), 'utf8')).toBe(
        node.userHostsToml,
      )
      expect(await readdir(join(node.certsDir, registry.host))).toEqual(['hosts.toml'])
    })
  },
)

/**
 * An IPv6-primary cluster: `status.hostIP` is an IPv6 address and the headless Service has only AAAA
 * records. Two nodes on this machine, both with host IP ::1; node b bootstraps at a's libp2p port (on a
 * cluster every node uses the same port on its own IP; here they share one host, so b listens on its own).
 * Then the upstream registry stops and b pulls the image a has, from a's peer endpoint over IPv6.
 */
describe('pod spec e2e (IPv6-primary nodes): bracketed host IP, IPv6 listeners, AAAA bootstrap', () => {
  let tmp: { path: string; remove(): Promise<void> }
  let registry: RegistryHandle
  let ref: string
  const nodes: PodNode[] = []

  beforeAll(async () => {
    tmp = await tempDir('pod-spec-ipv6')
    registry = await startRegistry()
    const image = await buildImage({ dir: join(tmp.path, 'image'), layers: [300_000, 50_000], seed: 'ipv6' })
    ref = `${registry.host}/pod/ipv6:v1`
    await pushImage(image.dir, ref)
    const p2pA = await freePort()
    for (const name of ['a', 'b'])
      nodes.push(
        await podNode({
          name,
          dir: join(tmp.path, name),
          preset: [],
          registry,
          hostIP: '::1',
          bootstrapIPs: ['::1'],
          p2pPort: name === 'a' ? p2pA : undefined,
        }),
      )
    // b's rendered bootstrap names its own port; point it at a's (env wins over the config file)
    const b = nodes[1]!
    const main = b.spec.containers[0]!
    main.env = [...(main.env ?? []), { name: 'KAGAMI_BOOTSTRAP', value: `dns:${BOOTSTRAP_NAME}:${p2pA}` }]
  }, 240_000)

  afterAll(async () => {
    for (const n of nodes) {
      await n.daemon?.stop(10_000)
      await n.containerd.destroy()
    }
    await registry?.destroy()
    await tmp?.remove()
  })

  it('both nodes start, advertise a bracketed peer URL, find each other over IPv6, and b pulls from a with the registry down', async () => {
    const [a, b] = nodes as [PodNode, PodNode]
    for (const n of nodes) {
      await runPodProcess(n.container(n.spec.initContainers![0]!, 'configure'))
      await startDaemon(n)
    }
    const status = async (n: PodNode): Promise<{ peerUrl: string; peers: { url: string }[] }> =>
      (await (await fetch(`${n.mirror}/status`)).json()) as never
    expect((await status(a)).peerUrl).toMatch(/^http:\/\/\[::1\]:\d+$/)
    await waitFor(async () => (await status(b)).peers.length === 1 && (await status(a)).peers.length === 1, {
      timeoutMs: 30_000,
      what: 'a and b to find each other through the AAAA-only bootstrap name',
      describe: async () => `${await a.daemon!.tail()}\n${await b.daemon!.tail()}`,
    })
    expect((await status(b)).peers[0]?.url).toBe((await status(a)).peerUrl)

    await a.containerd.pull(ref, { hostsDir: a.certsDir })
    await registry.stop()
    await waitFor(
      async () => {
        await b.containerd.pull(ref, { hostsDir: b.certsDir, timeoutMs: 20_000 })
        return true
      },
      { timeoutMs: 30_000, what: 'b to pull from a through its mirror', describe: () => b.daemon!.tail() },
    )
    expect(await b.containerd.images()).toContain(ref)
    expect(await b.daemon!.tail(100)).toMatch(/"source":"peer"/)
  })
})
