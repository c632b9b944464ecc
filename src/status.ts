import type { AbortOptions } from './store/store.js'

/** What `GET /status` on the mirror returns and `kagami status` prints. */
export interface DaemonStatus {
  peerId: string
  peerUrl: string
  /** `private` with a PSK; `open` means any host that reaches the p2p port can join. */
  network: 'private' | 'open'
  ready: boolean
  peers: { id: string; url: string }[]
  images: number
  advertisedKeys: number
  requests: { local: number; peer: number; miss: number }
  bytesServed: { local: number; peer: number }
  uptimeSeconds: number
}

export async function fetchStatus(mirrorAddress: string, options: AbortOptions = {}): Promise<DaemonStatus> {
  const url = `http://${mirrorAddress}/status`
  let res: Response
  try {
    res = await fetch(url, { signal: options.signal })
  } catch (err) {
    throw new Error(
      `cannot reach kagami at ${url}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`,
    )
  }
  if (!res.ok) throw new Error(`kagami at ${url} answered ${res.status}`)
  return (await res.json()) as DaemonStatus
}

export function formatStatus(s: DaemonStatus): string {
  const lines = [
    `peer id:         ${s.peerId}`,
    `peer endpoint:   ${s.peerUrl}`,
    `network:         ${s.network === 'private' ? 'private (PSK)' : 'OPEN: no PSK, any host can join'}`,
    `ready:           ${s.ready ? 'yes' : 'no'}`,
    `uptime:          ${Math.round(s.uptimeSeconds)} s`,
    `images:          ${s.images}`,
    `advertised keys: ${s.advertisedKeys}`,
    `requests:        ${s.requests.local} local, ${s.requests.peer} from peers, ${s.requests.miss} misses`,
    `bytes served:    ${s.bytesServed.local} local, ${s.bytesServed.peer} from peers`,
    `peers (${s.peers.length}):`,
    ...s.peers.map((p) => `  ${p.id}  ${p.url}`),
  ]
  return lines.join('\n')
}
