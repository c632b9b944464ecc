import { existsSync } from 'node:fs'
import { describe, expect, it } from 'vitest'

/** Node 20 reached end of life on 2026-04-30: the suite, bench and demo run on Node 24, with no polyfill. */
describe('runtime', () => {
  it('runs on Node 24 or newer, whose Promise.withResolvers libp2p needs is native', () => {
    expect(Number(process.versions.node.split('.')[0])).toBeGreaterThanOrEqual(24)
    expect(Promise.withResolvers.toString()).toMatch(/\[native code\]/)
    expect(existsSync(new URL('../../src/polyfill.ts', import.meta.url))).toBe(false)
  })
})
