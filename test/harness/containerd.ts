import { createHash } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type ManagedProcess, run, startProcess, waitFor } from './process.js'
import { tempDir } from './tmp.js'

/**
 * The sha256 of what containerd's content store holds under each digest, read from its blob files: a test
 * expects them to equal the digests (every byte arrived, none changed).
 */
export async function storedDigests(c: ContainerdHandle, digests: string[]): Promise<string[]> {
  return await Promise.all(
    digests.map(async (d) => {
      const bytes = await readFile(join(c.contentDir, 'blobs', 'sha256', d.slice(7)))
      return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
    }),
  )
}

export interface ContainerdHandle {
  /** Unix socket path. */
  address: string
  root: string
  state: string
  /** `<root>/io.containerd.content.v1.content`: blobs/sha256/<hex> and ingest/. */
  contentDir: string
  namespace: string
  /** Runs `ctr --address SOCK -n NS …` and returns stdout. */
  ctr(args: string[], options?: { timeoutMs?: number }): Promise<string>
  /** `ctr image pull --hosts-dir DIR ref` (plain HTTP comes from the hosts.toml URLs). */
  pull(
    ref: string,
    options: {
      hostsDir: string
      allPlatforms?: boolean
      platform?: string
      timeoutMs?: number
      /** `user:password` for the registry (`ctr --user`). */
      user?: string
    },
  ): Promise<string>
  removeImage(ref: string): Promise<void>
  /** Names of images in the namespace. */
  images(): Promise<string[]>
  restart(): Promise<void>
  stop(): Promise<void>
  /** Stops and removes root, state and socket. */
  destroy(): Promise<void>
}

// Plugins a node-local image store does not need; disabling them makes start-up take ~20 ms.
const DISABLED_PLUGINS = [
  'io.containerd.grpc.v1.cri',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.aufs',
  'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing',
  'io.containerd.runtime.v1.linux',
  'io.containerd.runtime.v2.task',
  'io.containerd.monitor.v1.cgroups',
  'io.containerd.internal.v1.opt',
]

/** A private containerd 1.6 (own root, state, socket and config), like one node of a cluster. */
export async function startContainerd(
  init: { name?: string; namespace?: string } = {},
): Promise<ContainerdHandle> {
  const dir = await tempDir(`containerd-${init.name ?? 'node'}`)
  const root = join(dir.path, 'root')
  const state = join(dir.path, 'state')
  const address = join(dir.path, 'containerd.sock')
  const configPath = join(dir.path, 'config.toml')
  const namespace = init.namespace ?? 'k8s.io'
  await writeFile(
    configPath,
    [
      'version = 2',
      `root = ${JSON.stringify(root)}`,
      `state = ${JSON.stringify(state)}`,
      `disabled_plugins = ${JSON.stringify(DISABLED_PLUGINS)}`,
      '[grpc]',
      `  address = ${JSON.stringify(address)}`,
      '[ttrpc]',
      `  address = ${JSON.stringify(`${address}.ttrpc`)}`,
      '[debug]',
      '  address = ""',
      '[metrics]',
      '  address = ""',
      '',
    ].join('\n'),
  )
  const ctr = (args: string[], options: { timeoutMs?: number } = {}): Promise<string> =>
    run('ctr', ['--address', address, '-n', namespace, ...args], { timeoutMs: options.timeoutMs ?? 120_000 })
  let proc: ManagedProcess | undefined
  const start = async (): Promise<void> => {
    proc = startProcess({
      command: 'containerd',
      args: ['--config', configPath],
      logPath: join(dir.path, 'containerd.log'),
    })
    const p = proc
    await waitFor(
      async () => {
        if (p.child.exitCode !== null) throw new Error(`containerd exited: ${await p.tail()}`)
        await ctr(['version'], { timeoutMs: 2000 })
        return true
      },
      { timeoutMs: 20_000, what: `containerd on ${address}`, describe: () => p.tail() },
    )
  }
  const stop = async (): Promise<void> => {
    await proc?.stop(10_000)
    proc = undefined
  }
  const handle: ContainerdHandle = {
    address,
    root,
    state,
    contentDir: join(root, 'io.containerd.content.v1.content'),
    namespace,
    ctr,
    async pull(ref, options) {
      const args = ['image', 'pull', '--hosts-dir', options.hostsDir]
      if (options.allPlatforms === true) args.push('--all-platforms')
      if (options.platform !== undefined) args.push('--platform', options.platform)
      if (options.user !== undefined) args.push('--user', options.user)
      return await ctr([...args, ref], { timeoutMs: options.timeoutMs ?? 180_000 })
    },
    async removeImage(ref) {
      await ctr(['image', 'rm', '--sync', ref])
    },
    async images() {
      return (await ctr(['image', 'ls', '-q'])).split('\n').filter((l) => l !== '')
    },
    async restart() {
      await stop()
      await start()
    },
    stop,
    async destroy() {
      await stop()
      // overlay/native snapshotter mounts may remain under root after an unpack
      await run('sh', ['-c', `grep -o " ${dir.path}[^ ]*" /proc/mounts | xargs -r -n1 umount -l`]).catch(
        () => undefined,
      )
      await dir.remove()
    },
  }
  try {
    await start()
  } catch (err) {
    await handle.destroy()
    throw err
  }
  return handle
}
