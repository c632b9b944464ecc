import { Command, CommanderError, Option } from 'commander'
import type { z } from 'zod'
import { failure } from './cli-error.js'
import {
  configureSchema,
  fields,
  fromEnv,
  fromFile,
  parseConfig,
  runSchema,
  type RunConfig,
} from './config.js'
import { cleanup, configure } from './containerd/configure.js'
import { VERSION } from './version.js'

export interface CliIo {
  stdout: (line: string) => void
  stderr: (line: string) => void
  env: NodeJS.ProcessEnv
  /**
   * Runs the daemon with the parsed config. Default: in this process; the `kagami` executable
   * (src/main.ts) re-executes itself for it instead (src/exec-daemon.ts).
   */
  runDaemon: (config: RunConfig) => Promise<number>
}

const defaultIo: CliIo = {
  stdout: (line) => process.stdout.write(`${line}\n`),
  stderr: (line) => process.stderr.write(`${line}\n`),
  env: process.env,
  runDaemon: async (config) => {
    const { runDaemon } = await import('./daemon.js') // keeps configure/cleanup/status free of libp2p
    return await runDaemon(config)
  },
}

/** Registers one option per schema field; defaults come from the schema, not commander. */
function addSchemaOptions(cmd: Command, schema: z.ZodObject): Command {
  for (const f of fields(schema)) {
    const shown = Array.isArray(f.defaultValue)
      ? ''
      : f.defaultValue === undefined
        ? ''
        : ` (default: ${String(f.defaultValue)})`
    const help = `${f.description}${shown}; env ${f.env}`
    const opt =
      f.kind === 'boolean'
        ? new Option(f.flag, help)
        : f.kind === 'array'
          ? new Option(`${f.flag} <value...>`, `${help} (repeatable)`)
          : new Option(`${f.flag} <value>`, help)
    cmd.addOption(opt)
  }
  return cmd
}

async function loadConfig<S extends z.ZodObject>(
  schema: S,
  flags: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
): Promise<Readonly<z.output<S>>> {
  const { config: file, ...rest } = flags
  const fileLayer = typeof file === 'string' ? await fromFile(file) : {}
  return parseConfig(schema, fileLayer, fromEnv(schema, env), rest)
}

/** Runs the CLI and returns the exit code. Errors print one line naming the problem, never a stack. */
export async function main(argv: string[], overrides: Partial<CliIo> = {}): Promise<number> {
  const io: CliIo = { ...defaultIo, ...overrides }
  let exitCode = 0
  const program = new Command('kagami')
    .description('Peer-to-peer container image sharing for containerd nodes')
    .version(VERSION, '-V, --version', 'print the version')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout(s.trimEnd()), writeErr: (s) => io.stderr(s.trimEnd()) })
    .showSuggestionAfterError()

  addSchemaOptions(
    program
      .command('run')
      .description(
        'run the daemon: read containerd, advertise on the DHT, serve the mirror and the peer endpoint',
      )
      .option('--config <file>', 'YAML or JSON config file (keys as in the flags, camelCase)'),
    runSchema,
  ).action(async (flags: Record<string, unknown>) => {
    const config = await loadConfig(runSchema, flags, io.env)
    exitCode = await io.runDaemon(config as RunConfig)
  })

  addSchemaOptions(
    program
      .command('configure')
      .description('write containerd hosts.toml files that put the kagami mirror first')
      .option('--config <file>', 'YAML or JSON config file'),
    configureSchema,
  ).action(async (flags: Record<string, unknown>) => {
    const config = await loadConfig(configureSchema, flags, io.env)
    const result = await configure({
      configPath: config.configPath,
      mirrorUrl: config.mirrorUrl.replace(/\/$/, ''),
      registries: config.registries,
      allRegistries: config.allRegistries,
      dialTimeoutMs: config.dialTimeout,
    })
    for (const path of result.backedUp) io.stdout(`backed up ${path}`)
    for (const path of result.written) io.stdout(`wrote ${path}`)
  })

  program
    .command('cleanup')
    .description('remove the hosts.toml files kagami wrote and restore the previous ones')
    .option('--config-path <dir>', 'containerd registry config_path', '/etc/containerd/certs.d')
    .action(async (flags: { configPath: string }) => {
      const result = await cleanup({ configPath: flags.configPath })
      for (const path of result.restored) io.stdout(`restored ${path}`)
      for (const path of result.removed) io.stdout(`removed ${path}`)
    })

  program
    .command('psk')
    .description('print a new random private-network key (64 hex characters) for --psk-file')
    .action(async () => {
      const { generatePsk } = await import('./trust/psk.js')
      io.stdout(generatePsk())
    })

  program
    .command('cleanup-wait')
    .description("uninstall hook: wait until every node's cleanup pod is done (never fails the uninstall)")
    .requiredOption('--daemonset <name>', 'the cleanup DaemonSet')
    .requiredOption('--namespace <ns>', 'its namespace')
    .option('--timeout <seconds>', 'give up waiting after this long (and still succeed)', '120')
    .action(async (flags: { daemonset: string; namespace: string; timeout: string }) => {
      const { inClusterApi, waitForCleanup } = await import('./cleanup-wait.js')
      const api = await inClusterApi(io.env)
      const r = await waitForCleanup(
        { fetch, log: io.stderr },
        {
          ...api,
          namespace: flags.namespace,
          daemonSet: flags.daemonset,
          timeoutMs: Number(flags.timeout) * 1000,
        },
      )
      io.stdout(`cleaned up on ${r.done.length} node(s)`)
      if (r.skipped.length > 0)
        io.stdout(`skipped (pod never started, node not running pods): ${r.skipped.join(' ')}`)
      if (r.timedOut) io.stdout(`gave up waiting for: ${r.pending.join(' ') || 'the DaemonSet status'}`)
    })

  program
    .command('status')
    .description("show a running daemon's readiness, peers, images, hits and misses (as its /ui page does)")
    .option('--mirror-address <host:port>', 'address of the mirror', '127.0.0.1:29020')
    .option('--peers', 'list every peer seen: address, last seen, keys, bytes fetched from it')
    .option('--image <ref>', 'which peers hold an image (registry/repo:tag), a digest, or part of a name')
    .option('--json', 'print the raw JSON')
    .action(async (flags: { mirrorAddress: string; peers?: boolean; image?: string; json?: boolean }) => {
      const status = await import('./status.js')
      const signal = AbortSignal.timeout(10_000)
      if (flags.image !== undefined) {
        const holders = await status.fetchHolders(flags.mirrorAddress, flags.image, { signal })
        io.stdout(flags.json === true ? JSON.stringify(holders, null, 2) : status.formatHolders(holders))
        return
      }
      const s = await status.fetchStatus(flags.mirrorAddress, { signal })
      if (flags.json === true) io.stdout(JSON.stringify(flags.peers === true ? s.peers : s, null, 2))
      else io.stdout(flags.peers === true ? status.formatPeers(s) : status.formatStatus(s))
    })

  try {
    await program.parseAsync(argv)
    return exitCode
  } catch (err) {
    if (err instanceof CommanderError) {
      // help and version exit 0; usage errors were already printed by commander
      return err.exitCode
    }
    const { line, exitCode } = failure(err)
    io.stderr(line)
    return exitCode
  }
}
