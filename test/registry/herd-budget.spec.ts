import { describe, expect, it } from 'vitest'
import { HerdBudget } from '../../src/registry/herd-budget.js'

function busy(ms: number): void {
  const until = performance.now() + ms
  while (performance.now() < until);
}

describe('HerdBudget', () => {
  it('is the floor until something slow is observed, follows slow answers, and never passes the cap', () => {
    const budget = new HerdBudget({ floorMs: 300, capMs: 2000 })
    try {
      expect(budget.ms).toBe(300)
      budget.observe(40) // quick answers keep it at the floor
      expect(budget.ms).toBe(300)
      budget.observe(500) // an answer that took 500 ms: 3 × the average
      const raised = budget.ms
      expect(raised).toBeGreaterThan(300)
      for (let i = 0; i < 20; i++) budget.observe(5000)
      expect(budget.ms).toBe(2000)
    } finally {
      budget.stop()
    }
  })

  it("rises with this node's own event-loop delay", async () => {
    const budget = new HerdBudget({ floorMs: 300, capMs: 2000, windowMs: 60_000 })
    try {
      // keep the loop blocked 200 ms a few times: the loop-delay histogram sees it
      for (let i = 0; i < 3; i++) {
        busy(200)
        await new Promise((r) => setTimeout(r, 20))
      }
      expect(budget.ms).toBeGreaterThanOrEqual(300 + 3 * 150)
    } finally {
      budget.stop()
    }
  })
})
