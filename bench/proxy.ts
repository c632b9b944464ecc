import { createServer, connect, type Server, type Socket } from 'node:net'

/**
 * A TCP proxy in front of the upstream registry: counts the bytes it sends to clients (upstream egress),
 * and optionally emulates a WAN link — a shared token bucket of `rateBytesPerSecond` and a one-way delay
 * per direction (RTT = 2 × delayMs). This kernel has no netem, so the delay lives here.
 */
export interface ThrottleProxy {
  url: string
  host: string
  bytesToClients(): number
  /**
   * While stalled, the proxy accepts connections and requests but forwards nothing towards the upstream:
   * a registry that "answers very slowly" (never, within any client's budget).
   */
  stall(on: boolean): void
  reset(): void
  close(): Promise<void>
}

export async function startProxy(init: {
  target: { host: string; port: number }
  rateBytesPerSecond?: number
  delayMs?: number
}): Promise<ThrottleProxy> {
  let sent = 0
  const sockets = new Set<Socket>()
  const rate = init.rateBytesPerSecond
  const delay = init.delayMs ?? 0
  // Shared bucket: the link is one pipe, however many connections use it.
  let available = rate ?? Infinity
  let last = performance.now()
  const take = async (n: number): Promise<void> => {
    if (rate === undefined) return
    for (;;) {
      const now = performance.now()
      available = Math.min(rate / 10, available + ((now - last) / 1000) * rate)
      last = now
      if (available >= n || available >= rate / 20) {
        available -= n
        return
      }
      await new Promise((r) => setTimeout(r, Math.max(1, ((n - available) / rate) * 1000)))
    }
  }
  let stalled: { promise: Promise<void>; release: () => void } | undefined
  /** Forwards chunks in order, each after the delay and within the rate (and not while stalled). */
  const relay = (from: Socket, to: Socket, count: boolean): void => {
    let chain = Promise.resolve()
    const closed = new Promise<void>((r) => from.once('close', () => r()))
    from.on('data', (chunk: Buffer) => {
      from.pause()
      chain = chain.then(async () => {
        // a client that gives up while stalled closes its side, so the wait ends with it
        while (!count && stalled !== undefined && !from.destroyed && !to.destroyed)
          await Promise.race([stalled.promise, closed])
        if (from.destroyed && !count) return
        if (delay > 0) await new Promise((r) => setTimeout(r, delay))
        await take(chunk.length)
        if (count) sent += chunk.length
        if (!to.destroyed) to.write(chunk)
        from.resume()
      })
    })
    from.on('end', () => void chain.then(() => to.end()))
    from.on('error', () => to.destroy())
    from.on('close', () => void chain.then(() => to.destroy()))
  }
  const server: Server = createServer((client) => {
    const upstream = connect(init.target.port, init.target.host)
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('close', () => sockets.delete(s))
      s.setNoDelay(true)
    }
    relay(client, upstream, false)
    relay(upstream, client, true)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    bytesToClients: () => sent,
    stall: (on) => {
      if (on && stalled === undefined) {
        let release = (): void => undefined
        const promise = new Promise<void>((r) => (release = r))
        stalled = { promise, release }
      } else if (!on && stalled !== undefined) {
        const s = stalled
        stalled = undefined
        s.release()
      }
    },
    reset: () => {
      sent = 0
    },
    close: async () => {
      stalled?.release()
      stalled = undefined
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
