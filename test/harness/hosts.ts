import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

/**
 * A containerd hosts dir for `ctr --hosts-dir`: `dir/<registryHost>/hosts.toml` with an optional mirror first
 * and the registry as `server`. Tests of `kagami configure` use the real renderer instead.
 */
export async function writeHostsDir(
  dir: string,
  init: { registryHost: string; mirrorUrl?: string; server?: string },
): Promise<void> {
  const lines = [`server = ${JSON.stringify(init.server ?? `http://${init.registryHost}`)}`]
  if (init.mirrorUrl !== undefined) {
    lines.push(`[host.${JSON.stringify(init.mirrorUrl)}]`, '  capabilities = ["pull", "resolve"]')
  }
  // containerd rejects a file without a [host] table, so the upstream is listed as a host too
  lines.push(
    `[host.${JSON.stringify(init.server ?? `http://${init.registryHost}`)}]`,
    '  capabilities = ["pull", "resolve"]',
  )
  await mkdir(join(dir, init.registryHost), { recursive: true })
  await writeFile(join(dir, init.registryHost, 'hosts.toml'), `${lines.join('\n')}\n`)
}
