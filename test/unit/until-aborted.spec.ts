import { describe, expect, it } from 'vitest'
import { untilAborted } from '../../src/abort.js'

/** Rejections nobody handled while `fn` ran, and for a few turns after. */
async function unhandledDuring(fn: () => Promise<void>): Promise<unknown[]> {
  const seen: unknown[] = []
  const onUnhandled = (reason: unknown): void => void seen.push(reason)
  process.on('unhandledRejection', onUnhandled)
  try {
    await fn()
    await new Promise((r) => setTimeout(r, 20))
  } finally {
    process.off('unhandledRejection', onUnhandled)
  }
  return seen
}

describe('untilAborted', () => {
  it('gives the value, or the rejection, of a promise that settles first', async () => {
    const ac = new AbortController()
    expect(await untilAborted(Promise.resolve(7), ac.signal)).toBe(7)
    await expect(untilAborted(Promise.reject(new Error('boom')), ac.signal)).rejects.toThrow('boom')
  })

  it('rejects with AbortError when the signal aborts first; the promise rejecting later is not unhandled', async () => {
    const ac = new AbortController()
    let fail!: (err: Error) => void
    const slow = new Promise<never>((_, reject) => (fail = reject))
    const seen = await unhandledDuring(async () => {
      const waiting = untilAborted(slow, ac.signal)
      ac.abort()
      await expect(waiting).rejects.toMatchObject({ name: 'AbortError' })
      fail(new Error('the query ended on the same signal'))
    })
    expect(seen).toEqual([])
  })

  it('an already aborted signal rejects at once, and the promise rejecting later is not unhandled', async () => {
    const ac = new AbortController()
    ac.abort()
    let fail!: (err: Error) => void
    const slow = new Promise<never>((_, reject) => (fail = reject))
    const seen = await unhandledDuring(async () => {
      await expect(untilAborted(slow, ac.signal)).rejects.toMatchObject({ name: 'AbortError' })
      fail(new Error('the query ended on the same signal'))
    })
    expect(seen).toEqual([])
  })
})
