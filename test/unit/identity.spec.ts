import { chmod, stat } from 'node:fs/promises'
import { join } from 'node:path'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { loadOrCreateIdentity } from '../../src/identity.js'
import { tempDir } from '../harness/index.js'

describe('identity key', () => {
  it('is created private, survives a reload, and a key readable by others is made private with a warning', async () => {
    const dir = await tempDir('identity')
    try {
      const lines: { msg: string; level: number }[] = []
      const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) })
      const first = await loadOrCreateIdentity(dir.path, log)
      const path = join(dir.path, 'identity.key')
      expect((await stat(path)).mode & 0o777).toBe(0o600)
      expect(lines).toEqual([])

      await chmod(path, 0o644)
      const again = await loadOrCreateIdentity(dir.path, log)
      expect(again.equals(first)).toBe(true)
      expect((await stat(path)).mode & 0o777).toBe(0o600)
      expect(lines).toMatchObject([{ level: 40, msg: expect.stringMatching(/readable by others/) }])
    } finally {
      await dir.remove()
    }
  })
})
