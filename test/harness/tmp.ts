import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** A temp dir under the OS temp dir; `remove()` deletes it and everything in it. */
export async function tempDir(prefix: string): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), `kagami-${prefix}-`))
  // KAGAMI_KEEP_TMP=1 keeps every directory (and the daemons' logs in it) for a look after a run
  const keep = process.env.KAGAMI_KEEP_TMP === '1'
  return { path, remove: async () => (keep ? undefined : await rm(path, { recursive: true, force: true })) }
}
