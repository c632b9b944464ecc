import { isIP } from 'node:net'

/**
 * Accepts the peer endpoint URL a peer announces (identify) only when its host is the IP the peer's libp2p
 * connection comes from: a peer cannot point our mirror at another host, at our own loopback mirror, or at
 * anything a connection from elsewhere could not be. Returns the URL or undefined.
 */
export function checkPeerUrl(url: string, remoteIp: string | undefined): string | undefined {
  if (remoteIp === undefined) return undefined
  let host: string
  try {
    const u = new URL(url)
    if (u.protocol !== 'http:' || u.pathname !== '/' || u.search !== '' || u.username !== '') return undefined
    host = u.hostname.replace(/^\[|\]$/g, '')
  } catch {
    return undefined
  }
  if (isIP(host) === 0) return undefined
  // The same IP as the connection, so loopback or link-local only when the connection itself is. Any
  // loopback address for a loopback connection: the peer is on this machine, which picks 127.0.0.1 as the
  // source of a connection to 127.0.0.x (nodes of a test on distinct loopback addresses).
  const [a, b] = [normalize(host), normalize(remoteIp)]
  return a === b || (isLoopback(a) && isLoopback(b)) ? url : undefined
}

function normalize(ip: string): string {
  const v = ip.toLowerCase()
  return v.startsWith('::ffff:') && isIP(v.slice(7)) === 4 ? v.slice(7) : v
}

function isLoopback(ip: string): boolean {
  return ip.startsWith('127.') || ip === '::1'
}
