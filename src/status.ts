/**
 * What `GET /status` answers and `kagami status` prints. Types and terminal formatting only: the CLI
 * imports this without loading the daemon (no libp2p, no fastify).
 */
import type { HistoryBucket, InflightRequest, RecentRequest } from './registry/activity.js'
import type { AbortOptions } from './abort.js'

export interface PeerStatus {
  id: string
  /** Its peer endpoint URL (the address this node fetches from). */
  url: string
  connected: boolean
  /** Unix ms: now while connected, else when it disconnected. */
  lastSeen: number
  connectedSince?: number
  /** Keys it announced to this node through the key exchange. */
  keys: number
  /** Bytes this node fetched from it, and in how many requests, since start. */
  bytesFrom: number
  requestsFrom: number
  /** Unix ms of the last successful fetch from it (0: never). */
  lastFetchAt: number
}

export interface ImageStatus {
  /** Digest of the image's root (index or manifest); '' when containerd could not be asked. */
  digest: string
  /** Every name this node holds the root under (`registry/repo:tag`, or `registry/repo@digest`). */
  names: string[]
  /** Keys (tag + digests) advertised for it; 0 when filtered out or not yet synced. */
  keys: number
  advertised: boolean
}

export interface DaemonStatus {
  peerId: string
  peerUrl: string
  /** `private` with a PSK; `open` means any host that reaches the p2p port can join. */
  network: 'private' | 'open'
  version: string
  /** Unix ms. */
  startedAt: number
  uptimeSeconds: number
  ready: boolean
  /** Why the node is not ready (empty when ready). */
  notReady: string[]
  /** Things an operator should know that do not make the node unready (e.g. no peers). */
  warnings: string[]
  containerd: { connected: boolean; address: string; namespace: string }
  /** Connected peers (harness and scripts wait on `peers.length`). */
  peers: PeerStatus[]
  /** Peers seen since start that are no longer connected, most recent first. */
  gonePeers: PeerStatus[]
  /** Number of images in containerd. */
  images: number
  imageList: ImageStatus[]
  /** False when containerd could not be asked: imageList is then what state sync last advertised. */
  imagesFromContainerd: boolean
  advertisedKeys: number
  pendingProvides: number
  /** Mirror requests since start by source. */
  requests: { local: number; peer: number; miss: number }
  bytesServed: { local: number; peer: number }
  /** What the peer endpoint served to other nodes. */
  servedToPeers: { requests: number; bytes: number; lastAt: number }
  recent: RecentRequest[]
  inflight: InflightRequest[]
  history: { bucketMs: number; buckets: HistoryBucket[] }
}

/** Who holds a digest or image, as the status page's search box and `kagami status --image` show it. */
export interface HoldersResult {
  query: string
  /** The routing key looked up (`sha256:…` or `registry/repo:tag`), when the query named one. */
  key?: string
  /** For a tag this node holds: the digest it points to. */
  digest?: string
  /** This node holds it. */
  self: boolean
  /** Peers holding the key; for a tag this node holds, also peers holding its root digest. */
  holders: { id: string; url: string }[]
  /** Tags known in the cluster whose name contains the query, with their holders (partial search). */
  matches: { key: string; self: boolean; holders: { id: string; url: string }[] }[]
  /** Why the query could not be looked up as given. */
  error?: string
}

async function getJson<T>(url: string, options: AbortOptions): Promise<T> {
  let res: Response
  try {
    res = await fetch(url, { signal: options.signal })
  } catch (err) {
    throw new Error(
      `cannot reach kagami at ${url}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`,
    )
  }
  if (!res.ok) throw new Error(`kagami at ${url} answered ${res.status}`)
  return (await res.json()) as T
}

export async function fetchStatus(mirrorAddress: string, options: AbortOptions = {}): Promise<DaemonStatus> {
  return await getJson<DaemonStatus>(`http://${mirrorAddress}/status`, options)
}

export async function fetchHolders(
  mirrorAddress: string,
  query: string,
  options: AbortOptions = {},
): Promise<HoldersResult> {
  return await getJson<HoldersResult>(
    `http://${mirrorAddress}/status/holders?q=${encodeURIComponent(query)}`,
    options,
  )
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let v = n / 1024
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`
}

/** "3 s ago", "5 min ago", for last-seen columns. */
export function formatAgo(atMs: number, nowMs: number = Date.now()): string {
  if (atMs <= 0) return 'never'
  const s = Math.max(0, Math.round((nowMs - atMs) / 1000))
  if (s < 2) return 'now'
  if (s < 120) return `${s} s ago`
  if (s < 7200) return `${Math.round(s / 60)} min ago`
  return `${Math.round(s / 3600)} h ago`
}

export function formatDuration(seconds: number): string {
  const s = Math.round(seconds)
  if (s < 120) return `${s} s`
  if (s < 7200) return `${Math.floor(s / 60)} min ${s % 60} s`
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`
}

export function hitRatio(r: { local: number; peer: number; miss: number }): number | undefined {
  const total = r.local + r.peer + r.miss
  return total === 0 ? undefined : (r.local + r.peer) / total
}

function table(rows: string[][]): string[] {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? []
  return rows.map((r) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd(),
  )
}

export function formatStatus(s: DaemonStatus): string {
  const ratio = hitRatio(s.requests)
  const lines = [
    `peer id:         ${s.peerId}`,
    `version:         ${s.version}`,
    `peer endpoint:   ${s.peerUrl}`,
    `network:         ${s.network === 'private' ? 'private (PSK)' : 'OPEN: no PSK, any host can join'}`,
    `ready:           ${s.ready ? 'yes' : `no (${s.notReady.join('; ')})`}`,
    `containerd:      ${s.containerd.connected ? 'connected' : 'NOT connected'} (${s.containerd.address}, namespace ${s.containerd.namespace})`,
    `uptime:          ${formatDuration(s.uptimeSeconds)}`,
    `images:          ${s.images} in containerd, ${s.imageList.filter((i) => i.advertised).length} advertised`,
    `advertised keys: ${s.advertisedKeys} (${s.pendingProvides} DHT provides pending)`,
    `requests:        ${s.requests.local} local, ${s.requests.peer} from peers, ${s.requests.miss} misses${ratio === undefined ? '' : ` (hit ratio ${(ratio * 100).toFixed(0)}%)`}`,
    `bytes served:    ${formatBytes(s.bytesServed.local)} local, ${formatBytes(s.bytesServed.peer)} from peers`,
    `served to peers: ${s.servedToPeers.requests} requests, ${formatBytes(s.servedToPeers.bytes)}`,
    ...s.warnings.map((w) => `warning:         ${w}`),
    `peers (${s.peers.length} connected, ${s.gonePeers.length} gone):`,
    ...s.peers.map((p) => `  ${p.id}  ${p.url}`),
  ]
  return lines.join('\n')
}

export function formatPeers(s: DaemonStatus, nowMs: number = Date.now()): string {
  const all = [...s.peers, ...s.gonePeers]
  if (all.length === 0) return 'no peers seen since start'
  return table([
    ['PEER', 'ADDRESS', 'STATE', 'LAST SEEN', 'KEYS', 'FETCHED FROM', 'LAST FETCH'],
    ...all.map((p) => [
      p.id,
      p.url,
      p.connected ? 'connected' : 'gone',
      formatAgo(p.lastSeen, nowMs),
      String(p.keys),
      `${formatBytes(p.bytesFrom)} / ${p.requestsFrom} req`,
      formatAgo(p.lastFetchAt, nowMs),
    ]),
  ]).join('\n')
}

export function formatHolders(h: HoldersResult): string {
  const lines: string[] = []
  if (h.error !== undefined) lines.push(`note: ${h.error}`)
  if (h.key !== undefined) {
    lines.push(`${h.key}${h.digest !== undefined ? ` → ${h.digest}` : ''}`)
    lines.push(`  this node: ${h.self ? 'holds it' : 'does not hold it'}`)
    if (h.holders.length === 0) lines.push('  peers: none hold it')
    for (const p of h.holders) lines.push(`  peer ${p.id}  ${p.url}`)
  }
  for (const m of h.matches) {
    if (m.key === h.key) continue
    const who = [...(m.self ? ['this node'] : []), ...m.holders.map((p) => p.id)]
    lines.push(`${m.key}: ${who.length === 0 ? 'nobody' : who.join(', ')}`)
  }
  if (lines.length === 0) lines.push(`nothing known matches ${JSON.stringify(h.query)}`)
  return lines.join('\n')
}
