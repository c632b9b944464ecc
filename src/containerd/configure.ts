import { mkdir, readdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { isManaged, registryTarget, renderHostsToml, type RegistryTarget } from './hosts-toml.js'

const HOSTS = 'hosts.toml'
/** The user's file, moved aside byte for byte; `cleanup` moves it back. */
const BACKUP = 'hosts.toml.kagami-backup'
/** Present when kagami created the directory, so `cleanup` may remove it. */
const CREATED_DIR = '.kagami-created'

export interface ConfigureInit {
  configPath: string
  mirrorUrl: string
  registries: readonly string[]
  allRegistries: boolean
  dialTimeoutMs: number
}

export interface ConfigureResult {
  written: string[]
  backedUp: string[]
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.kagami-tmp-${process.pid}`
  await writeFile(tmp, text, { mode: 0o644 })
  await rename(tmp, path) // containerd re-reads hosts.toml per pull: never let it see half a file
}

/**
 * Writes `<configPath>/<registry>/hosts.toml` with the mirror first. Idempotent: a file kagami wrote is
 * rewritten; a user's file becomes the backup (replacing an older one) and its settings are kept.
 */
export async function configure(init: ConfigureInit): Promise<ConfigureResult> {
  const targets: RegistryTarget[] = init.registries.map(registryTarget)
  if (init.allRegistries) targets.push({ dir: '_default' })
  if (targets.length === 0)
    throw new Error('nothing to configure: pass --registries <url>... or --all-registries')
  const result: ConfigureResult = { written: [], backedUp: [] }
  await mkdir(init.configPath, { recursive: true })
  for (const target of targets) {
    const dir = join(init.configPath, target.dir)
    const created = (await mkdir(dir, { recursive: true })) !== undefined
    if (created) await writeFile(join(dir, CREATED_DIR), '')
    const hostsPath = join(dir, HOSTS)
    const current = await readIfExists(hostsPath)
    let previous = await readIfExists(join(dir, BACKUP))
    if (current !== undefined && !isManaged(current)) {
      // The user's current file is the one to restore, even when an older backup exists: it was written
      // after our last configure (the chart's init container runs configure on every pod start).
      await rename(hostsPath, join(dir, BACKUP))
      result.backedUp.push(hostsPath)
      previous = current
    }
    const text = renderHostsToml({
      mirrorUrl: init.mirrorUrl,
      server: target.server,
      ca: target.ca,
      skipVerify: target.skipVerify,
      dialTimeoutMs: init.dialTimeoutMs,
      previous,
    })
    await writeAtomic(hostsPath, text)
    result.written.push(hostsPath)
  }
  return result
}

export interface CleanupResult {
  restored: string[]
  removed: string[]
}

/** Undoes `configure` for every registry dir under configPath: restores backups byte-identically. */
export async function cleanup(init: { configPath: string }): Promise<CleanupResult> {
  const result: CleanupResult = { restored: [], removed: [] }
  let entries: string[]
  try {
    entries = await readdir(init.configPath)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return result
    throw err
  }
  for (const name of entries.sort()) {
    const dir = join(init.configPath, name)
    const hostsPath = join(dir, HOSTS)
    const current = await readIfExists(hostsPath).catch(() => undefined)
    const backup = await readIfExists(join(dir, BACKUP)).catch(() => undefined)
    if (backup !== undefined) {
      // Only replace a file kagami manages; a user file written since then wins and the backup is dropped.
      if (current === undefined || isManaged(current)) {
        await rename(join(dir, BACKUP), hostsPath)
        result.restored.push(hostsPath)
      } else {
        await rm(join(dir, BACKUP))
      }
    } else if (current !== undefined && isManaged(current)) {
      await rm(hostsPath)
      result.removed.push(hostsPath)
    }
    if ((await readIfExists(join(dir, CREATED_DIR)).catch(() => undefined)) !== undefined) {
      await rm(join(dir, CREATED_DIR))
      await rmdir(dir).catch(() => undefined) // keep it if someone else put files there
    }
  }
  return result
}
