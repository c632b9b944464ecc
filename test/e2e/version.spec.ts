import { readFile } from 'node:fs/promises'
import { describe, expect, it } from 'vitest'
import { kagamiExit } from '../harness/index.js'

describe('kagami --version', () => {
  it('prints the package version and exits 0', async () => {
    const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version: string
    }
    for (const flag of ['--version', '-V']) {
      const r = await kagamiExit([flag])
      expect(r).toMatchObject({ code: 0, stdout: `${pkg.version}\n` })
    }
  })
})
