import type { RunConfig } from './config.js'

/** The parsed `kagami run` config, as JSON, for the re-executed process (src/main.ts reads it). */
export const RUN_CONFIG_ENV = 'KAGAMI_RUN_CONFIG'

/**
 * glibc's malloc keeps what it freed when it was not mmap'd, and its threshold for mmap grows to 32 MiB
 * as big blocks come and go: the ~15 MiB V8 needs while it compiles the bundle stayed resident in an idle
 * daemon. A fixed 32 KiB threshold (V8's compile zones are made of 32 KiB segments) gives that back at
 * once: ~16 MiB less idle RSS (bench/memory.ts). glibc reads it once, when the process starts.
 */
const MALLOC_ENV = { MALLOC_MMAP_THRESHOLD_: '32768' }

/**
 * V8 flags of the daemon's process (on top of the executable's own, bin/kagami.js), replaced by
 * `KAGAMI_V8_FLAGS` (space-separated) when it is set: NODE_OPTIONS does not accept V8's tiering flags.
 */
export const DAEMON_V8_FLAGS: readonly string[] = []

/**
 * Runs the daemon of `kagami run` once the CLI has parsed and checked the config: the process executes
 * itself again (same process id, `process.execve`) with the config as JSON in the environment, and the new
 * image loads only the daemon. Why: an ES module is never unloaded, so the CLI's commander, zod with the
 * config schemas and yaml (~6 MiB of an idle daemon's RSS, bench/memory.ts) would stay for the daemon's
 * life; and the malloc setting above must be in the environment before node starts. Where `execve` is
 * missing (not Linux or macOS), the daemon runs in this process.
 */
export async function execDaemon(config: RunConfig): Promise<number> {
  const script = process.argv[1]
  if (typeof process.execve !== 'function' || script === undefined) {
    const { runDaemon } = await import('./daemon.js')
    return await runDaemon(config)
  }
  const v8Flags = process.env.KAGAMI_V8_FLAGS?.split(' ').filter((f) => f !== '') ?? DAEMON_V8_FLAGS
  process.execve(process.execPath, [process.execPath, ...process.execArgv, ...v8Flags, script, 'run'], {
    ...MALLOC_ENV,
    ...process.env,
    [RUN_CONFIG_ENV]: JSON.stringify(config),
  })
  throw new Error('process.execve returned') // it replaces this process, or throws
}
