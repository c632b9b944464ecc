/**
 * The status page, rendered on the server as one HTML document.
 *
 * Why server-side HTML and not a bundled single-page app: the daemon must not need the network or a
 * build step to serve it, the page must load on a node where only `curl`/a port-forward reach it, and
 * everything it shows is already in `/status`. A template function in TypeScript is ~300 lines with no
 * dependency; the only JavaScript is ~20 lines that re-fetch the page every few seconds and swap the live
 * part in. Without JavaScript the page still works: the search is a plain GET form.
 *
 * Every value that can come from outside this node (peer ids, URLs, image names from peers' key lists,
 * request paths) goes through `esc`.
 */
import type { RecentRequest } from '../registry/activity.js'
import {
  type DaemonStatus,
  formatAgo,
  formatBytes,
  formatDuration,
  type HoldersResult,
  hitRatio,
} from '../status.js'
import { bytesChart, requestsChart } from './chart.js'

export function esc(value: unknown): string {
  return String(value ?? '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;')
}

const short = (id: string): string => (id.length > 16 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id)
const shortDigest = (d: string): string => (d.startsWith('sha256:') ? `${d.slice(0, 19)}…` : d)

function badge(ok: boolean, text: string, warn = false): string {
  return `<span class="badge ${ok ? 'ok' : warn ? 'warn' : 'bad'}">${esc(text)}</span>`
}

const STYLE = `
:root{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#f5f6f8}
body{margin:0}header{background:#1f2a37;color:#fff;padding:10px 18px;display:flex;gap:14px;align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0 8px 0 0;font-weight:600}header code{color:#cfe}
main{padding:12px 18px;display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 14px;min-width:0;overflow-x:auto}
section.wide{grid-column:1/-1}h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:3px 8px 3px 0;border-bottom:1px solid #eef0f2;vertical-align:top;white-space:nowrap}
td.wrap{white-space:normal;word-break:break-all}th{color:#667;font-weight:500}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-weight:600;font-size:12px}
.ok{background:#d6f5e0;color:#11632f}.bad{background:#fbd9d7;color:#8a1c16}.warn{background:#fff0c2;color:#6b5200}
.src-local{color:#2f5fc4}.src-peer{color:#1d7a43;font-weight:600}.src-miss{color:#b52b27}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}dt{color:#667}dd{margin:0;word-break:break-all}
.big{font-size:22px;font-weight:600}.muted{color:#889}.reasons{margin:4px 0 0;padding-left:18px;color:#8a1c16}
form{display:flex;gap:6px}input[type=search]{flex:1;padding:5px 8px;font:inherit;border:1px solid #bbc;border-radius:4px}
button{font:inherit;padding:5px 12px}.chart{margin:0 0 8px}.chart figcaption{font-weight:500}.axis{font-size:10px;fill:#889}
.legend{font-size:12px;color:#556}.key{margin-right:10px}.key i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.stats{display:flex;gap:22px;flex-wrap:wrap;margin-bottom:8px}.stats div small{display:block;color:#667}
`

function node(s: DaemonStatus): string {
  const connected = s.peers.length
  return `<section id="node"><h2>This node</h2><dl>
<dt>peer id</dt><dd><code>${esc(s.peerId)}</code></dd>
<dt>version</dt><dd>${esc(s.version)}</dd>
<dt>uptime</dt><dd>${esc(formatDuration(s.uptimeSeconds))}</dd>
<dt>readiness</dt><dd>${s.ready ? badge(true, 'ready') : `${badge(false, 'not ready')}<ul class="reasons">${s.notReady.map((r) => `<li>${esc(r)}</li>`).join('')}</ul>`}</dd>
<dt>containerd</dt><dd>${badge(s.containerd.connected, s.containerd.connected ? 'connected' : 'disconnected')} <span class="muted">${esc(s.containerd.address)} · namespace ${esc(s.containerd.namespace)}</span></dd>
<dt>peer endpoint</dt><dd>${esc(s.peerUrl)}</dd>
<dt>network</dt><dd>${s.network === 'private' ? badge(true, 'private (PSK)') : badge(false, 'open: no PSK', true)}</dd>
<dt>peers</dt><dd>${connected} connected${connected === 0 ? ` ${badge(false, 'isolated', true)}` : ''}</dd>
<dt>advertised keys</dt><dd>${s.advertisedKeys} <span class="muted">(${s.pendingProvides} DHT provides pending)</span></dd>
<dt>served to peers</dt><dd>${s.servedToPeers.requests} requests, ${esc(formatBytes(s.servedToPeers.bytes))} <span class="muted">(last ${esc(formatAgo(s.servedToPeers.lastAt))})</span></dd>
${s.warnings.map((w) => `<dt>warning</dt><dd>${badge(false, w, true)}</dd>`).join('\n')}
</dl></section>`
}

function traffic(s: DaemonStatus): string {
  const ratio = hitRatio(s.requests)
  const { buckets, bucketMs } = s.history
  return `<section id="traffic"><h2>Traffic</h2><div class="stats">
<div><span class="big">${ratio === undefined ? '–' : `${(ratio * 100).toFixed(0)}%`}</span><small>hit ratio (local + peers)</small></div>
<div><span class="big">${s.requests.peer}</span><small>served from peers</small></div>
<div><span class="big">${s.requests.local}</span><small>served locally</small></div>
<div><span class="big">${s.requests.miss}</span><small>misses (upstream)</small></div>
<div><span class="big">${esc(formatBytes(s.bytesServed.peer))}</span><small>bytes from peers</small></div>
</div>${requestsChart(buckets, bucketMs)}${bytesChart(buckets, bucketMs)}</section>`
}

function peers(s: DaemonStatus, now: number): string {
  const rows = [...s.peers, ...s.gonePeers].map(
    (p) => `<tr><td title="${esc(p.id)}"><code>${esc(short(p.id))}</code></td><td>${esc(p.url)}</td>
<td>${p.connected ? badge(true, 'connected') : badge(false, 'gone', true)}</td><td>${esc(formatAgo(p.lastSeen, now))}</td>
<td>${p.keys}</td><td>${esc(formatBytes(p.bytesFrom))} <span class="muted">/ ${p.requestsFrom} req</span></td><td>${esc(formatAgo(p.lastFetchAt, now))}</td></tr>`,
  )
  return `<section id="peers" class="wide"><h2>Peers (${s.peers.length} connected${s.gonePeers.length > 0 ? `, ${s.gonePeers.length} gone` : ''})</h2>
${rows.length === 0 ? '<p class="muted">No peer seen since start.</p>' : `<table><tr><th>peer</th><th>address</th><th>state</th><th>last seen</th><th>keys</th><th>fetched from it</th><th>last fetch</th></tr>${rows.join('')}</table>`}</section>`
}

function images(s: DaemonStatus): string {
  const rows = s.imageList.map(
    (
      i,
    ) => `<tr><td class="wrap">${i.names.map((n) => esc(n)).join('<br>')}</td><td title="${esc(i.digest)}"><code>${esc(shortDigest(i.digest))}</code></td>
<td>${i.advertised ? badge(true, `advertised · ${i.keys} keys`) : badge(false, 'not advertised', true)}</td></tr>`,
  )
  const stale = s.imagesFromContainerd
    ? ''
    : `<p>${badge(false, 'containerd unreachable', true)} <span class="muted">what this node advertised last:</span></p>`
  return `<section id="images" class="wide"><h2>Images held (${s.images})</h2>${stale}
${rows.length === 0 ? '<p class="muted">containerd holds no image in this namespace.</p>' : `<table><tr><th>names (tags)</th><th>digest</th><th>advertised</th></tr>${rows.join('')}</table>`}</section>`
}

function recentRow(r: RecentRequest, now: number): string {
  const source = r.source ?? (r.server === 'peer' ? '' : '–')
  const what = r.repository !== undefined ? `${r.registry ?? ''}/${r.repository}` : ''
  return `<tr><td>${esc(formatAgo(r.at, now))}</td><td>${r.server === 'peer' ? 'to a peer' : 'mirror'}</td><td>${esc(r.method)} ${esc(r.kind)}</td>
<td class="wrap">${esc(what)} <code title="${esc(r.ref)}">${esc(shortDigest(r.ref ?? ''))}</code></td><td>${r.status}</td>
<td class="src-${esc(source)}">${esc(r.server === 'peer' ? 'served' : source)}</td><td title="${esc(r.peer)}">${esc(r.peer === undefined ? '' : short(r.peer))}</td>
<td>${esc(formatBytes(r.bytes))}</td><td>${r.durationMs} ms</td></tr>`
}

function recent(s: DaemonStatus, now: number): string {
  const inflight =
    s.inflight.length === 0
      ? ''
      : `<p>${s.inflight.length} in flight: ${s.inflight
          .slice(0, 5)
          .map((r) => `<code>${esc(r.method)} ${esc(r.path)}</code> (${esc(formatAgo(r.startedAt, now))})`)
          .join(', ')}</p>`
  return `<section id="recent" class="wide"><h2>Recent requests</h2>${inflight}
${s.recent.length === 0 ? '<p class="muted">No registry request yet.</p>' : `<table><tr><th>when</th><th>server</th><th>request</th><th>what</th><th>status</th><th>source</th><th>peer</th><th>bytes</th><th>time</th></tr>${s.recent.map((r) => recentRow(r, now)).join('')}</table>`}</section>`
}

function search(h: HoldersResult | undefined): string {
  const form = `<form method="get" action="/ui" role="search"><input type="search" name="q" placeholder="image (registry/repo:tag) or digest (sha256:…) or part of a name" value="${esc(h?.query)}" aria-label="image or digest"><button type="submit">Who has it?</button></form>`
  if (h === undefined || h.query === '')
    return `<section id="search" class="wide"><h2>Find holders</h2>${form}</section>`
  const parts: string[] = []
  if (h.error !== undefined) parts.push(`<p class="muted">${esc(h.error)}</p>`)
  if (h.key !== undefined) {
    const who = [
      ...(h.self ? ['<li><b>this node</b></li>'] : []),
      ...h.holders.map(
        (p) =>
          `<li class="holder" data-peer="${esc(p.id)}"><code>${esc(p.id)}</code> <span class="muted">${esc(p.url)}</span></li>`,
      ),
    ]
    parts.push(
      `<p><code>${esc(h.key)}</code>${h.digest !== undefined ? ` → <code>${esc(h.digest)}</code>` : ''}: ${who.length === 0 ? badge(false, 'nobody holds it', true) : `held by ${who.length}`}</p>${who.length === 0 ? '' : `<ul id="holders">${who.join('')}</ul>`}`,
    )
  }
  const others = h.matches.filter((m) => m.key !== h.key)
  if (others.length > 0) {
    parts.push(
      `<table><tr><th>matching tags in the cluster</th><th>held by</th></tr>${others
        .map(
          (m) =>
            `<tr><td class="wrap"><a href="/ui?q=${encodeURIComponent(m.key)}">${esc(m.key)}</a></td><td class="wrap">${[...(m.self ? ['this node'] : []), ...m.holders.map((p) => short(p.id))].map(esc).join(', ') || 'nobody'}</td></tr>`,
        )
        .join('')}</table>`,
    )
  }
  if (parts.length === 0) parts.push(`<p class="muted">Nothing known matches ${esc(h.query)}.</p>`)
  return `<section id="search" class="wide"><h2>Find holders</h2>${form}<div id="results">${parts.join('')}</div></section>`
}

/** The part of the page the browser refreshes in place. */
export function renderLive(s: DaemonStatus, now: number = Date.now()): string {
  return `${node(s)}${traffic(s)}${peers(s, now)}${images(s)}${recent(s, now)}`
}

function header(s: DaemonStatus): string {
  const connected = s.peers.length
  return `<h1>kagami</h1><span>node <code title="${esc(s.peerId)}">${esc(short(s.peerId))}</code></span>
${s.ready ? badge(true, 'READY') : badge(false, 'NOT READY')}
${badge(s.containerd.connected, s.containerd.connected ? 'containerd connected' : 'containerd DISCONNECTED')}
${badge(connected > 0, `${connected} peer${connected === 1 ? '' : 's'}`, true)}
<span class="muted">v${esc(s.version)} · up ${esc(formatDuration(s.uptimeSeconds))}</span>`
}

export interface PageInit {
  /** Per-response CSP nonce for the one inline script. */
  nonce: string
  refreshMs?: number
}

export function renderPage(s: DaemonStatus, holders: HoldersResult | undefined, init: PageInit): string {
  const refreshMs = init.refreshMs ?? 5000
  // The script only swaps in fresh HTML for the live sections and the header; the search stays put.
  const script = `
(function(){var busy=false;setInterval(function(){if(busy||document.hidden)return;busy=true;
fetch(location.pathname+'?live=1',{cache:'no-store'}).then(function(r){return r.ok?r.text():null}).then(function(t){
if(t===null)return;var d=new DOMParser().parseFromString(t,'text/html');
['live','top'].forEach(function(id){var n=d.getElementById(id),o=document.getElementById(id);if(n&&o)o.innerHTML=n.innerHTML});
}).catch(function(){}).finally(function(){busy=false})},${refreshMs})})();`
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>kagami · ${esc(short(s.peerId))} · ${s.ready ? 'ready' : 'not ready'}</title><style>${STYLE}</style></head>
<body><header id="top">${header(s)}</header>
<main>${search(holders)}<div id="live" style="display:contents">${renderLive(s)}</div></main>
<script nonce="${esc(init.nonce)}">${script}</script></body></html>`
}

/** The live fragment wrapped so the script can parse it (`/ui?live=1`). */
export function renderLiveDocument(s: DaemonStatus): string {
  return `<!doctype html><html><body><header id="top">${header(s)}</header><div id="live">${renderLive(s)}</div></body></html>`
}
