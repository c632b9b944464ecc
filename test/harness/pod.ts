import { existsSync, statSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type ManagedProcess, run, startProcess } from './process.js'

/**
 * Runs a rendered pod's container as a real process that sees exactly the pod's paths: a private mount
 * namespace (util-linux `unshare -m`) where each of the container's volume mounts is a bind mount of a host
 * directory or file at its `mountPath`. Paths that do not exist on this machine (/run/containerd,
 * /var/lib/kagami, …) are created inside an overlay of their nearest existing parent, whose upper layer is
 * a tmpfs of the namespace: nothing is written to this machine's /run, /etc or /var/lib.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
/** The image's `ENTRYPOINT ["kagami"]`, from a checkout (bin/kagami.js runs the source through tsx). */
export const KAGAMI_ENTRYPOINT = join(ROOT, 'bin', 'kagami.js')

export interface PodContainer {
  name: string
  command?: string[]
  args?: string[]
  env?: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[]
  volumeMounts?: { name: string; mountPath: string; subPath?: string; readOnly?: boolean }[]
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> }
}

export interface PodVolume {
  name: string
  hostPath?: { path: string; type?: string }
  configMap?: { name: string }
  secret?: { secretName: string }
}

export interface PodMount {
  /** Path on this machine: a directory, a file or a socket. */
  source: string
  /** Path inside the pod. */
  target: string
  readOnly: boolean
}

export interface PodProcessInit {
  container: PodContainer
  volumes: PodVolume[]
  /** Volume name → path on this machine (a hostPath's stand-in, or a dir holding a ConfigMap's keys). */
  sources: Record<string, string>
  /** Values of `fieldRef` env (e.g. `status.hostIP`). */
  fieldRefs: Record<string, string>
  /** What the kubelet adds to every pod: the service-account token mount and `KUBERNETES_SERVICE_*`. */
  kubelet?: { mounts?: PodMount[]; env?: Record<string, string> }
  /** Extra lines for the pod's /etc/hosts (the cluster DNS names the pod resolves). */
  etcHosts?: string[]
  /** Scratch dir for the namespace's tmpfs and the generated /etc/hosts. */
  scratch: string
  logPath: string
}

/** Kubernetes' env semantics: `$(NAME)` expands an earlier variable, `$$` is a literal `$`. */
export function podEnv(container: PodContainer, fieldRefs: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {}
  for (const e of container.env ?? []) {
    if (e.valueFrom?.fieldRef !== undefined) {
      const v = fieldRefs[e.valueFrom.fieldRef.fieldPath]
      if (v === undefined) throw new Error(`no value for fieldRef ${e.valueFrom.fieldRef.fieldPath}`)
      env[e.name] = v
    } else {
      env[e.name] = (e.value ?? '').replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name?: string) =>
        name === undefined ? '$' : (env[name] ?? m),
      )
    }
  }
  return env
}

/** The container's mounts, with each volume resolved to its stand-in on this machine. */
export function podMounts(init: Pick<PodProcessInit, 'container' | 'volumes' | 'sources'>): PodMount[] {
  return (init.container.volumeMounts ?? []).map((m) => {
    const volume = init.volumes.find((v) => v.name === m.name)
    if (volume === undefined) throw new Error(`mount ${m.name} has no volume`)
    const base = init.sources[m.name]
    if (base === undefined) throw new Error(`no stand-in for volume ${m.name}`)
    return {
      source: m.subPath !== undefined ? join(base, m.subPath) : base,
      target: m.mountPath,
      readOnly: m.readOnly === true,
    }
  })
}

function nearestExisting(path: string): string {
  let p = path
  while (!existsSync(p)) p = dirname(p)
  return p
}

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`

/** The shell script that builds the pod's view inside the new mount namespace, then execs the container. */
export function namespaceScript(
  mounts: PodMount[],
  scratch: string,
  etc: { hosts: string; nsswitch: string } | undefined,
): string {
  const targets = mounts.map((m) => m.target)
  // overlay the nearest existing parent of every missing path (outermost only: inner ones are inside it)
  const bases = [...new Set(targets.filter((t) => !existsSync(t)).map((t) => nearestExisting(dirname(t))))]
  const overlays = bases.filter((b) => !bases.some((o) => o !== b && (b.startsWith(`${o}/`) || o === '/')))
  for (const o of overlays) if (o === '/') throw new Error(`refusing to overlay / for ${targets.join(' ')}`)
  const lines = ['set -e', `mount -t tmpfs kagami-pod ${q(scratch)}`]
  overlays.forEach((o, i) => {
    const u = join(scratch, `upper${i}`)
    const w = join(scratch, `work${i}`)
    lines.push(
      `mkdir -p ${q(u)} ${q(w)}`,
      `mount -t overlay overlay -o ${q(`lowerdir=${o},upperdir=${u},workdir=${w}`)} ${q(o)}`,
    )
  })
  const sorted = [...mounts].sort((a, b) => a.target.split('/').length - b.target.split('/').length)
  for (const m of sorted) {
    const isDir = statSync(m.source).isDirectory()
    lines.push(
      isDir
        ? `mkdir -p ${q(m.target)}`
        : `mkdir -p ${q(dirname(m.target))} && { [ -e ${q(m.target)} ] || touch ${q(m.target)}; }`,
      `mount --bind ${q(m.source)} ${q(m.target)}`,
    )
    if (m.readOnly) lines.push(`mount -o remount,bind,ro ${q(m.target)}`)
  }
  if (etc !== undefined)
    lines.push(
      `mount --bind ${q(etc.hosts)} /etc/hosts`,
      `mount --bind ${q(etc.nsswitch)} /etc/nsswitch.conf`,
    )
  lines.push('exec "$@"')
  return lines.join('\n')
}

/** The container's argv: its `command` (else the image's ENTRYPOINT, kagami) and `args`. */
export function podArgv(container: PodContainer): string[] {
  const command = container.command ?? [KAGAMI_ENTRYPOINT]
  return [...command, ...(container.args ?? [])]
}

async function prepare(init: PodProcessInit): Promise<{ argv: string[]; env: NodeJS.ProcessEnv }> {
  await mkdir(init.scratch, { recursive: true })
  let etc: { hosts: string; nsswitch: string } | undefined
  if (init.etcHosts !== undefined) {
    // names resolve from this file only: the stand-in for cluster DNS, and no query leaves the machine
    etc = { hosts: `${init.scratch}.hosts`, nsswitch: `${init.scratch}.nsswitch.conf` }
    await writeFile(etc.hosts, `127.0.0.1 localhost\n::1 localhost\n${init.etcHosts.join('\n')}\n`)
    await writeFile(etc.nsswitch, 'hosts: files\n')
  }
  const script = namespaceScript([...podMounts(init), ...(init.kubelet?.mounts ?? [])], init.scratch, etc)
  const argv = [
    '--mount',
    '--propagation',
    'private',
    '--',
    'sh',
    '-c',
    script,
    'pod',
    ...podArgv(init.container),
  ]
  // the image's environment (node on PATH, production mode) plus the container's own
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: '/root',
    NODE_ENV: 'production',
    ...init.kubelet?.env,
    ...podEnv(init.container, init.fieldRefs),
  }
  return { argv, env }
}

/** Starts a long-running container (the daemon). */
export async function startPodProcess(init: PodProcessInit): Promise<ManagedProcess> {
  const { argv, env } = await prepare(init)
  return startProcess({ command: 'unshare', args: argv, logPath: init.logPath, env, cwd: '/' })
}

/** Runs a container to completion (an init container); rejects with its output on a non-zero exit. */
export async function runPodProcess(init: PodProcessInit): Promise<string> {
  const { argv, env } = await prepare(init)
  return await run('unshare', argv, { env, cwd: '/', timeoutMs: 60_000 })
}
