import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { BufferPool } from '../../src/buffer-pool.js'
import { readFileRange } from '../../src/store/file-read.js'
import { tempDir } from '../harness/index.js'

describe('readFileRange', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let path: string
  const pool = new BufferPool({ bufferBytes: 64 * 1024, maxFree: 4 })
  const bytes = Buffer.alloc(200 * 1024, 7)

  beforeEach(async () => {
    dir = await tempDir('file-read')
    path = join(dir.path, 'blob')
    await writeFile(path, bytes)
  })
  afterEach(() => dir.remove())

  it('streams the asked range', async () => {
    const chunks: Buffer[] = []
    for await (const c of await readFileRange(path, { start: 100, end: 150_000 }, pool))
      chunks.push(c as Buffer)
    expect(Buffer.concat(chunks).equals(bytes.subarray(100, 150_001))).toBe(true)
  })

  // A peer that hedged to another holder aborts while this node is still opening the file: the answer is an
  // AbortError, not a TypeError from a stream destroyed before it had its file (seen in the herd bench).
  it('an abort while the file opens rejects with AbortError and leaves no open file', async () => {
    for (let i = 0; i < 50; i++) {
      const controller = new AbortController()
      const reading = readFileRange(path, { start: 0, end: bytes.length - 1 }, pool, controller.signal)
      controller.abort()
      await expect(reading).rejects.toMatchObject({ name: 'AbortError' })
    }
  })

  it('an abort after opening ends the stream with AbortError', async () => {
    const controller = new AbortController()
    const stream = await readFileRange(path, { start: 0, end: bytes.length - 1 }, pool, controller.signal)
    controller.abort()
    await expect(
      (async () => {
        for await (const _ of stream) void _
      })(),
    ).rejects.toMatchObject({ name: 'AbortError' })
  })
})
