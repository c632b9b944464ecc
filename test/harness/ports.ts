import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'

/**
 * The kernel's ephemeral range: the source ports of outgoing connections (libp2p dials, HTTP clients) and
 * of listen(0). A port handed out from it and bound seconds later can meanwhile be some connection's source
 * port: a cluster's pre-allocated libp2p port failed to bind that way (EADDRINUSE, e2e herd).
 */
function ephemeralRange(): [number, number] {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number)
    if (low !== undefined && high !== undefined && low > 0 && high >= low) return [low, high]
  } catch {
    // not Linux: the IANA range
  }
  return [49152, 65535]
}

const [EPHEMERAL_LOW] = ephemeralRange()
const FIRST = 10_000

function bindable(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer()
    srv.once('error', () => resolve(false))
    srv.listen(port, host, () => srv.close(() => resolve(true)))
  })
}

/**
 * A TCP port free on 127.0.0.1 right now, below the ephemeral range (so no outgoing connection takes it before
 * the caller binds it), picked at random: concurrent test files rarely draw the same one, and a port in use is
 * skipped.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const span = EPHEMERAL_LOW - FIRST
  for (let i = 0; i < 100 && span > 1000; i++) {
    const port = FIRST + Math.floor(Math.random() * span)
    if (await bindable(port, host)) return port
  }
  // no room below the ephemeral range: let the OS pick
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, host, () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}
