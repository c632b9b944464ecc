import { failure } from './cli-error.js'
import type { RunConfig } from './config.js'
import { runDaemon } from './daemon.js'

/** The daemon of `kagami run`, from the config the CLI parsed before it re-executed (src/exec-daemon.ts). */
export async function runParsed(json: string): Promise<number> {
  try {
    return await runDaemon(Object.freeze(JSON.parse(json) as RunConfig))
  } catch (err) {
    const { line, exitCode } = failure(err)
    process.stderr.write(`${line}\n`)
    return exitCode
  }
}
