import { Registry } from 'prom-client'
import { describe, expect, it } from 'vitest'
import { Activity } from '../../src/registry/activity.js'
import { type RequestOutcome, RegistryMetrics } from '../../src/registry/metrics.js'
import { formatHolders, formatPeers, type DaemonStatus } from '../../src/status.js'
import { esc, renderPage } from '../../src/ui/page.js'
import { isLoopback } from '../../src/ui/routes.js'
import { metricNamesIn, metricNamesInPromQL } from '../e2e/observability.js'

const outcome = (o: Partial<RequestOutcome>): RequestOutcome => ({
  server: 'mirror',
  kind: 'blob',
  source: 'peer',
  status: 200,
  registry: 'docker.io',
  method: 'GET',
  ref: 'sha256:' + 'a'.repeat(64),
  peer: '12D3KooPeerA',
  bytes: 1000,
  durationSeconds: 0.01,
  ttfbSeconds: 0.002,
  remoteAddress: '127.0.0.1',
  ...o,
})

describe('RegistryMetrics', () => {
  it('every series the dashboard reads exists at 0 before any request', async () => {
    const registry = new Registry()
    new RegistryMetrics(registry)
    const text = await registry.metrics()
    expect(text).toMatch(/^kagami_peer_failures_total\{reason="DeadlineExceededError"\} 0$/m)
    expect(text).toMatch(
      /^kagami_requests_total\{server="mirror",kind="blob",source="miss",status="404",registry="none"\} 0$/m,
    )
    expect(text).toMatch(
      /^kagami_request_duration_seconds_count\{server="mirror",kind="manifest",source="peer"\} 0$/m,
    )
    expect(text).toMatch(/^kagami_last_peer_serve_timestamp_seconds\{server="peer"\} 0$/m)
  })

  it('a new registry gets its sibling series at 0; the label is bounded against hostile ?ns=', async () => {
    const registry = new Registry()
    const m = new RegistryMetrics(registry)
    m.observe(outcome({ registry: 'ghcr.io' }))
    const text = await registry.metrics()
    expect(text).toMatch(
      /^kagami_requests_total\{server="mirror",kind="blob",source="peer",status="200",registry="ghcr.io"\} 1$/m,
    )
    expect(text).toMatch(
      /^kagami_requests_total\{server="mirror",kind="manifest",source="miss",status="404",registry="ghcr.io"\} 0$/m,
    )
    expect(text).toMatch(
      /^kagami_bytes_served_total\{server="mirror",source="peer",registry="ghcr.io"\} 1000$/m,
    )
    for (let i = 0; i < 100; i++)
      m.observe(outcome({ server: 'peer', source: 'miss', registry: `r${i}.example` }))
    const values = (await m.requests.get()).values.map((v) => v.labels.registry)
    expect(new Set(values).size).toBeLessThanOrEqual(33)
    expect(values).toContain('other')
  })

  it('feeds the activity the page shows: totals, per-peer bytes, served-to-peers', () => {
    const m = new RegistryMetrics(new Registry())
    m.observe(outcome({}))
    m.observe(outcome({ source: 'local', peer: undefined, bytes: 10 }))
    m.observe(outcome({ source: 'miss', status: 404, bytes: 0, peer: undefined }))
    m.observe(outcome({ server: 'peer', source: 'local', bytes: 77, peer: undefined }))
    expect(m.activity.totals).toEqual({ local: 1, peer: 1, miss: 1, bytesLocal: 10, bytesPeer: 1000 })
    expect(m.activity.peerTraffic('12D3KooPeerA')).toMatchObject({ bytesFrom: 1000, requestsFrom: 1 })
    expect(m.activity.servedToPeers).toMatchObject({ requests: 1, bytes: 77 })
    expect(m.activity.recent().map((r) => r.server)).toEqual(['peer', 'mirror', 'mirror', 'mirror'])
  })
})

describe('Activity', () => {
  it('keeps a bounded ring (newest first) and a fixed window of buckets with empty ones filled', () => {
    let now = 1_000_000
    const a = new Activity({ recentSize: 3, bucketMs: 1000, buckets: 5, now: () => now })
    for (let i = 0; i < 5; i++) {
      a.record(outcome({ bytes: i }))
      now += 1000
    }
    expect(a.recent().map((r) => r.bytes)).toEqual([4, 3, 2])
    const { buckets } = a.buckets()
    expect(buckets).toHaveLength(5)
    expect(buckets.map((b) => b.peer)).toEqual([1, 1, 1, 1, 0])
    now += 10_000
    expect(a.buckets().buckets.every((b) => b.peer === 0)).toBe(true)
  })
})

describe('status page and CLI formatting', () => {
  const status: DaemonStatus = {
    peerId: '12D3KooSelf',
    peerUrl: 'http://10.0.0.1:30021',
    network: 'private',
    version: '0.1.0',
    startedAt: 0,
    uptimeSeconds: 65,
    ready: false,
    notReady: ['containerd is not connected (/run/containerd.sock); reconnecting'],
    warnings: [],
    containerd: { connected: false, address: '/run/containerd.sock', namespace: 'k8s.io' },
    peers: [
      {
        id: '12D3Koo<img src=x onerror=alert(1)>',
        url: 'http://10.0.0.2:30021',
        connected: true,
        lastSeen: Date.now(),
        keys: 3,
        bytesFrom: 2048,
        requestsFrom: 2,
        lastFetchAt: 0,
      },
    ],
    gonePeers: [],
    images: 1,
    imageList: [
      { digest: 'sha256:' + 'b'.repeat(64), names: ['docker.io/library/x:"1"'], keys: 4, advertised: true },
    ],
    imagesFromContainerd: true,
    advertisedKeys: 4,
    pendingProvides: 0,
    requests: { local: 1, peer: 2, miss: 1 },
    bytesServed: { local: 1, peer: 2048 },
    servedToPeers: { requests: 0, bytes: 0, lastAt: 0 },
    recent: [],
    inflight: [],
    history: { bucketMs: 10_000, buckets: [] },
  }

  it('escapes everything that comes from peers', () => {
    const html = renderPage(status, undefined, { nonce: 'n' })
    expect(html).not.toContain('<img src=x')
    expect(html).toContain('NOT READY')
    expect(html).toContain('containerd is not connected')
    expect(esc(`"'<>&`)).toBe('&quot;&#39;&lt;&gt;&amp;')
  })

  it('prints peers and holders as tables an operator can grep', () => {
    expect(formatPeers(status)).toMatch(/^PEER\s+ADDRESS\s+STATE/)
    expect(formatPeers(status)).toContain('2.0 KiB / 2 req')
    expect(
      formatHolders({
        query: 'x',
        key: 'docker.io/library/x:1',
        self: true,
        holders: [{ id: 'P1', url: 'http://p1' }],
        matches: [],
      }),
    ).toBe('docker.io/library/x:1\n  this node: holds it\n  peer P1  http://p1')
  })

  it('loopback only: 127/8, ::1 and IPv4-mapped', () => {
    expect(isLoopback('127.0.0.1')).toBe(true)
    expect(isLoopback('127.3.2.1')).toBe(true)
    expect(isLoopback('::1')).toBe(true)
    expect(isLoopback('::ffff:127.0.0.1')).toBe(true)
    expect(isLoopback('10.0.0.1')).toBe(false)
    expect(isLoopback('::ffff:10.0.0.1')).toBe(false)
    expect(isLoopback(undefined)).toBe(false)
  })
})

describe('PromQL metric names', () => {
  it('finds metric names, not label values, functions or strings', () => {
    expect(
      metricNamesInPromQL(
        'histogram_quantile(0.99, sum by (le) (rate(kagami_request_ttfb_seconds_bucket{server="kagami_fake"}[5m]))) / on () count(kagami_build_info)',
      ),
    ).toEqual(['kagami_request_ttfb_seconds_bucket', 'kagami_build_info'])
  })

  it('reads names from samples and from # TYPE (histograms with their series)', () => {
    const names = metricNamesIn('# TYPE a_seconds histogram\n# TYPE b_total counter\nc{x="1"} 2\n')
    expect([...names].sort()).toEqual([
      'a_seconds',
      'a_seconds_bucket',
      'a_seconds_count',
      'a_seconds_sum',
      'b_total',
      'c',
    ])
  })
})
