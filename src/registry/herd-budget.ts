import { monitorEventLoopDelay } from 'node:perf_hooks'

export interface HerdBudgetInit {
  /** The budget on a quiet node (`--herd-budget`). */
  floorMs: number
  /** The most it rises to (`--herd-budget-max`): the longest a frozen elected node can hold a pull up. */
  capMs: number
  /** How often the event-loop delay window turns over (default 5 s). */
  windowMs?: number
}

/**
 * How long a requester waits for the elected node's response headers (herd.ts). A fixed 300 ms is right on a
 * quiet node and wrong on a busy one: when a rollout starts, every node's containerd and kagami wake at once,
 * answers take longer than 300 ms although every node is alive, and each timeout sends a whole blob upstream
 * again (8-node bench: 21 timeouts, 4× the image upstream). So the budget follows what is observed, within
 * [floor, cap]: three times the recent answer time of elected nodes (a timeout counts as at least the budget
 * it used), and this node's own event-loop delay (a node kept off the CPU is slow to read an answer too).
 * A dead node refuses the connection at once; only a frozen one (or a host gone without a reset) costs the
 * wait, and never more than the cap. Defaults from the 8-node bench on 2 cores, with the requester's second
 * look for a node following the elected one (herd.ts): a 300 ms floor sent 1.00–1.50× the image upstream,
 * 1 s sent 1.00× in every run.
 */
export class HerdBudget {
  private averageMs: number | undefined
  private readonly loop: ReturnType<typeof monitorEventLoopDelay>
  private previousLoopMs = 0
  private readonly timer: NodeJS.Timeout

  constructor(private readonly init: HerdBudgetInit) {
    this.loop = monitorEventLoopDelay({ resolution: 10 })
    this.loop.enable()
    this.timer = setInterval(() => {
      this.previousLoopMs = this.loop.percentile(99) / 1e6
      this.loop.reset()
    }, init.windowMs ?? 5000)
    this.timer.unref()
  }

  /** An elected node answered after `ms`, or did not answer within a budget of `ms`. */
  observe(ms: number): void {
    this.averageMs = this.averageMs === undefined ? ms : 0.7 * this.averageMs + 0.3 * ms
  }

  get ms(): number {
    const loopMs = Math.max(this.previousLoopMs, this.loop.count > 0 ? this.loop.percentile(99) / 1e6 : 0)
    const wanted = Math.max(this.init.floorMs, 3 * (this.averageMs ?? 0), this.init.floorMs + 3 * loopMs)
    return Math.round(Math.min(this.init.capMs, wanted))
  }

  stop(): void {
    clearInterval(this.timer)
    this.loop.disable()
  }
}
