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
 * `Buffer.poolSize` in the daemon. Node 24 carves small Buffers out of 64 KiB slabs (8 KiB before), and one
 * long-lived slice keeps its whole slab: a libp2p connection's remote multiaddr, a DHT distance. With
 * hundreds of connections, array buffers held per connection end went from 20.5 to 12.7 KiB with 8 KiB slabs
 * (24 routers in one process, bench/results/scale.md). The daemon's blob path has its own buffers
 * (src/buffer-pool.ts), so the smaller pool costs it nothing.
 */
export const DAEMON_BUFFER_POOL_BYTES = 8 * 1024

/** Set by scripts/bundle.mjs, absent when running from the source (tsx) or the tsc build. */
declare const __KAGAMI_BUNDLE_V8_FLAGS__: string[] | undefined

/**
 * V8 flags of the daemon's process (on top of the executable's own, bin/kagami.js): the bundle's
 * (scripts/bundle.mjs), replaced by `KAGAMI_V8_FLAGS` (space-separated) when it is set, for A/B runs
 * (NODE_OPTIONS refuses V8's tiering flags).
 */
export const DAEMON_V8_FLAGS: readonly string[] =
  typeof __KAGAMI_BUNDLE_V8_FLAGS__ === 'undefined' ? [] : __KAGAMI_BUNDLE_V8_FLAGS__

/**
 * Runs the daemon of `kagami run` once the CLI has parsed and checked the config: the process executes
 * itself again (same process id, `process.execve`) with the config as JSON in the environment, and the new
 * image loads only the daemon. Why: an ES module is never unloaded, so the CLI's commander, zod with the
 * config schemas and yaml (~3.5 MiB of an idle daemon's RSS, bench/memory.ts) would stay for the daemon's
 * life; and the malloc setting above must be in the environment before node starts. Where `execve` is
 * missing (not Linux or macOS), the daemon runs in this process.
 */
export async function execDaemon(config: RunConfig): Promise<number> {
  const script = process.argv[1]
  if (typeof process.execve !== 'function' || script === undefined) {
    Buffer.poolSize = DAEMON_BUFFER_POOL_BYTES // as src/main.ts does for the re-executed daemon
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
