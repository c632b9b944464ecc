import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { DaemonStatus } from '../../src/status.js'
import type { ContainerdHandle } from './containerd.js'
import { freePort } from './ports.js'
import { type ManagedProcess, run, startProcess, waitFor } from './process.js'
import { tempDir } from './tmp.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const BIN = join(ROOT, 'bin', 'kagami.js')

export interface KagamiHandle {
  name: string
  mirrorUrl: string
  mirrorAddress: string
  peerUrl: string
  /** `/ip4/127.0.0.1/tcp/PORT/p2p/ID`, for other nodes' --bootstrap. */
  p2pMultiaddr: string
  stateDir: string
  process: ManagedProcess
  status(): Promise<DaemonStatus>
  /** Starts it again with the same ports, identity and flags. */
  restart(): Promise<void>
  kill(): void
  stop(): Promise<void>
  destroy(): Promise<void>
}

export interface StartKagamiInit {
  name: string
  containerd: ContainerdHandle
  bootstrap?: string[]
  extraArgs?: string[]
  /** Log level for the daemon's log file (default info). */
  logLevel?: string
  /** Extra environment, e.g. `KAGAMI_FROM_DIST: '1'` to run the compiled build (bench measures that). */
  env?: NodeJS.ProcessEnv
  /** Pre-allocated libp2p port, so nodes can list each other (like the chart's DNS bootstrap) before start. */
  p2pPort?: number
}

/** Runs `kagami run` as a separate OS process on loopback ports, from source (tsx). */
export async function startKagami(init: StartKagamiInit): Promise<KagamiHandle> {
  const dir = await tempDir(`kagami-${init.name}`)
  const [mirrorPort, peerPort, p2pPort] = [
    await freePort(),
    await freePort(),
    init.p2pPort ?? (await freePort()),
  ]
  const mirrorAddress = `127.0.0.1:${mirrorPort}`
  const args = [
    'run',
    '--containerd-address',
    init.containerd.address,
    '--containerd-namespace',
    init.containerd.namespace,
    '--containerd-content-dir',
    init.containerd.contentDir,
    '--mirror-address',
    mirrorAddress,
    '--peer-address',
    `127.0.0.1:${peerPort}`,
    '--p2p-address',
    `/ip4/127.0.0.1/tcp/${p2pPort}`,
    '--state-dir',
    join(dir.path, 'state'),
    '--log-level',
    init.logLevel ?? 'info',
    ...(init.bootstrap ?? []).flatMap((b) => ['--bootstrap', b]),
    ...(init.extraArgs ?? []),
  ]
  let proc: ManagedProcess | undefined
  const status = async (): Promise<DaemonStatus> => {
    const res = await fetch(`http://${mirrorAddress}/status`, { signal: AbortSignal.timeout(2000) })
    return (await res.json()) as DaemonStatus
  }
  let peerId = ''
  const start = async (): Promise<void> => {
    // run the bin directly, so its shebang (node flags) applies as it does in the container image
    proc = startProcess({
      command: BIN,
      args,
      logPath: join(dir.path, 'kagami.log'),
      env: { ...process.env, ...init.env },
      cwd: ROOT,
    })
    const p = proc
    const s = await waitFor(
      async () => {
        if (p.child.exitCode !== null) throw new Error(`kagami ${init.name} exited: ${await p.tail()}`)
        return await status()
      },
      { timeoutMs: 30_000, what: `kagami ${init.name} on ${mirrorAddress}`, describe: () => p.tail() },
    )
    peerId = s.peerId
  }
  await start()
  const handle: KagamiHandle = {
    name: init.name,
    mirrorUrl: `http://${mirrorAddress}`,
    mirrorAddress,
    peerUrl: `http://127.0.0.1:${peerPort}`,
    get p2pMultiaddr() {
      return `/ip4/127.0.0.1/tcp/${p2pPort}/p2p/${peerId}`
    },
    stateDir: join(dir.path, 'state'),
    get process() {
      return proc as ManagedProcess
    },
    status,
    async restart() {
      await proc?.stop()
      await start()
    },
    kill() {
      proc?.kill('SIGKILL')
    },
    async stop() {
      await proc?.stop(10_000)
    },
    async destroy() {
      await proc?.stop(10_000)
      await dir.remove()
    },
  }
  return handle
}

/** Runs a kagami CLI command to completion (configure, cleanup, status). */
export async function kagamiCli(args: string[]): Promise<string> {
  return await run(BIN, args, {
    env: process.env,
    cwd: ROOT,
  })
}

/** Runs kagami and returns exit code, stdout and stderr, whatever the exit code. */
export async function kagamiExit(
  args: string[],
  timeoutMs = 30_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { spawn } = await import('node:child_process')
  return await new Promise((resolve) => {
    const child = spawn(BIN, args, {
      env: process.env,
      cwd: ROOT,
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}
