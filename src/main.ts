import { DAEMON_BUFFER_POOL_BYTES, execDaemon, RUN_CONFIG_ENV } from './exec-daemon.js'

// Two ways in: the CLI, or the daemon that `kagami run` re-executed with its parsed config
// (src/exec-daemon.ts). Both are imported only here, so the daemon's process never loads the CLI.
const runConfig = process.env[RUN_CONFIG_ENV]
if (runConfig !== undefined) {
  delete process.env[RUN_CONFIG_ENV]
  Buffer.poolSize = DAEMON_BUFFER_POOL_BYTES
  const { runParsed } = await import('./run-parsed.js')
  process.exitCode = await runParsed(runConfig)
} else {
  const { main } = await import('./cli.js')
  process.exitCode = await main(process.argv, { runDaemon: execDaemon })
}
