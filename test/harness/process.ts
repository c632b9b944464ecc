import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { createWriteStream, type WriteStream } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'

const running = new Set<ChildProcess>()
// A crashed or timed-out test must not leave daemons behind: kill what is still running on exit.
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

export interface ManagedProcess {
  child: ChildProcess
  logPath: string
  /** Last lines of the log, for error messages. */
  tail(lines?: number): Promise<string>
  exited: Promise<number | null>
  stop(timeoutMs?: number): Promise<void>
  kill(signal?: NodeJS.Signals): void
}

export interface SpawnInit {
  command: string
  args: string[]
  logPath: string
  env?: NodeJS.ProcessEnv
  cwd?: string
}

export function startProcess(init: SpawnInit): ManagedProcess {
  const log: WriteStream = createWriteStream(init.logPath, { flags: 'a' })
  const child = spawn(init.command, init.args, {
    env: init.env ?? process.env,
    cwd: init.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  running.add(child)
  child.stdout?.pipe(log, { end: false })
  child.stderr?.pipe(log, { end: false })
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      running.delete(child)
      resolve(code)
    })
    child.once('error', () => {
      running.delete(child)
      resolve(null)
    })
  })
  const tail = async (lines = 20): Promise<string> => {
    const text = await readFile(init.logPath, 'utf8').catch(() => '')
    return text.trimEnd().split('\n').slice(-lines).join('\n')
  }
  const stop = async (timeoutMs = 5000): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      const done = await Promise.race([exited.then(() => true), sleep(timeoutMs).then(() => false)])
      if (!done) {
        child.kill('SIGKILL')
        await exited
      }
    }
    await new Promise<void>((resolve) => log.end(resolve))
  }
  return {
    child,
    logPath: init.logPath,
    tail,
    exited,
    stop,
    kill: (signal = 'SIGKILL') => child.kill(signal),
  }
}

/** Polls `check` until it resolves truthy, failing with `describe()` after the deadline. */
export async function waitFor<T>(
  check: () => Promise<T | undefined | false>,
  init: { timeoutMs: number; intervalMs?: number; what: string; describe?: () => Promise<string> },
): Promise<T> {
  const deadline = Date.now() + init.timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const v = await check()
      if (v !== undefined && v !== false) return v
    } catch (err) {
      lastError = err
    }
    if (Date.now() > deadline) {
      const extra = init.describe !== undefined ? `\n${await init.describe()}` : ''
      const why = lastError !== undefined ? ` (last error: ${(lastError as Error).message})` : ''
      throw new Error(`timed out after ${init.timeoutMs} ms waiting for ${init.what}${why}${extra}`)
    }
    await sleep(init.intervalMs ?? 50)
  }
}

/** Runs a command to completion; rejects with its stderr on a non-zero exit. */
export async function run(
  command: string,
  args: string[],
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<string> {
  return await new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      {
        timeout: options.timeoutMs ?? 120_000,
        maxBuffer: 64 * 1024 * 1024,
        env: options.env,
        cwd: options.cwd,
      },
      (err, stdout, stderr) => {
        if (err !== null) {
          reject(new Error(`${command} ${args.join(' ')} failed: ${stderr.trim() || err.message}`))
        } else {
          resolve(stdout)
        }
      },
    )
  })
}

/** Retries an assertion until it passes or the deadline: DHT state converges, it is not instantaneous. */
export async function eventually(check: () => Promise<void>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      return await check()
    } catch (err) {
      if (Date.now() > deadline) throw err
      await sleep(100)
    }
  }
}
