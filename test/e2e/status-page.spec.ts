import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type Browser, chromium } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { HoldersResult } from '../../src/status.js'
import {
  type BuiltImage,
  buildImage,
  type Cluster,
  type ClusterNode,
  kagamiCli,
  pushImage,
  type RegistryHandle,
  startCluster,
  startRegistry,
  tempDir,
  waitFor,
} from '../harness/index.js'
import { dashboardMetricNames, metricNamesIn, ruleMetricNames } from './observability.js'

/** Screenshots land here (gitignored); CI keeps the folder as the test's artifact. */
export const ARTIFACTS = fileURLToPath(new URL('../../.tmp/artifacts/', import.meta.url))

/**
 * What an operator sees, against a real 2-node cluster (2 containerd, 2 `kagami run`, docker-registry):
 * A pulls an image, B pulls it from A; B's status page (in Debian's Chromium, driven by playwright-core)
 * finds A as a holder; `kagami status` prints the same; `/metrics` carries what the dashboard and the
 * alerts query.
 */
describe('e2e: status page, CLI and metrics on a 2-node cluster', () => {
  let registry: RegistryHandle
  let image: BuiltImage
  let cluster: Cluster | undefined
  let tmp: { path: string; remove(): Promise<void> }
  let ref: string
  let a: ClusterNode
  let b: ClusterNode
  let browser: Browser | undefined

  const holders = async (node: ClusterNode, q: string): Promise<HoldersResult> =>
    (await (
      await fetch(`${node.kagami.mirrorUrl}/status/holders?q=${encodeURIComponent(q)}`)
    ).json()) as HoldersResult
  const scrape = async (node: ClusterNode): Promise<string> =>
    await (await fetch(`${node.kagami.mirrorUrl}/metrics`)).text()

  beforeAll(async () => {
    tmp = await tempDir('ui')
    registry = await startRegistry()
    image = await buildImage({ dir: join(tmp.path, 'image'), layers: [2_000_000, 300_000] })
    ref = `${registry.host}/team/web:v1`
    await pushImage(image.dir, ref)
    cluster = await startCluster({ names: ['a', 'b'], registries: [registry.url] })
    ;[a, b] = cluster.nodes as [ClusterNode, ClusterNode]
    // A pulls through the registry; B then pulls the same image, from A
    await a.containerd.pull(ref, { hostsDir: a.hostsDir })
    await waitFor(async () => (await holders(b, ref)).holders.length > 0 || undefined, {
      timeoutMs: 20_000,
      what: 'B to learn that A holds the image',
    })
    // with the registry stopped, so the bytes surely come from A (a loaded machine may otherwise miss a
    // deadline and let containerd fetch from the registry, which is right, but not what this test shows)
    await registry.stop()
    await b.containerd.pull(ref, { hostsDir: b.hostsDir })
    await registry.start()
    // B also pulls an image no node has (its mirror misses, containerd goes upstream), and asks its mirror
    // again for what it now holds (local hits): the page then shows every source
    const other = await buildImage({ dir: join(tmp.path, 'other'), layers: [400_000], seed: 'other' })
    await pushImage(other.dir, `${registry.host}/team/api:v2`)
    await b.containerd.pull(`${registry.host}/team/api:v2`, { hostsDir: b.hostsDir })
    const manifest = `${b.kagami.mirrorUrl}/v2/team/web/manifests/v1?ns=${encodeURIComponent(registry.host)}`
    for (let i = 0; i < 3; i++) {
      const res = await fetch(manifest, { headers: { accept: image.root.mediaType } })
      expect(res.headers.get('docker-content-digest')).toBe(image.root.digest)
      await res.arrayBuffer()
    }
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    })
  }, 240_000)

  afterAll(async () => {
    await browser?.close()
    await cluster?.destroy()
    await registry?.destroy()
    await tmp?.remove()
  })

  it("B's page: search the image, A is listed as a holder; screenshot saved", async () => {
    const aId = (await a.kagami.status()).peerId
    const page = await browser!.newPage({ viewport: { width: 1280, height: 1000 } })
    try {
      const res = await page.goto(`${b.kagami.mirrorUrl}/ui`)
      expect(res?.status()).toBe(200)
      await expect(page.locator('header').textContent()).resolves.toContain('READY')
      // B fetched from A: the peer table shows A with bytes, the recent requests show peer-sourced rows
      await expect(page.locator('#peers').textContent()).resolves.toContain(aId.slice(-6))
      expect(await page.locator('#recent td.src-peer').count()).toBeGreaterThan(0)
      await expect(page.locator('#images').textContent()).resolves.toContain(ref)

      await page.fill('input[name=q]', ref)
      await page.press('input[name=q]', 'Enter')
      await page.waitForSelector('#holders')
      const listed = await page
        .locator('#holders li.holder')
        .evaluateAll((els) => els.map((e) => e.getAttribute('data-peer')))
      expect(listed).toContain(aId)
      await expect(page.locator('#results').textContent()).resolves.toContain(image.root.digest)

      // a partial name finds the tag among the cluster's keys
      await page.fill('input[name=q]', 'team/web')
      await page.press('input[name=q]', 'Enter')
      await expect(page.locator('#results').textContent()).resolves.toContain(ref)

      // back to the exact search for the screenshot an operator would see
      await page.goto(`${b.kagami.mirrorUrl}/ui?q=${encodeURIComponent(ref)}`)
      await mkdir(ARTIFACTS, { recursive: true })
      const shot = join(ARTIFACTS, 'status-page.png')
      await page.screenshot({ path: shot, fullPage: true })
      // the page's own script refreshes the live part in place without errors
      const errors: string[] = []
      page.on('pageerror', (e) => errors.push(e.message))
      await page.waitForTimeout(5_500)
      expect(errors).toEqual([])
      await expect(page.locator('#holders').textContent()).resolves.toContain(aId)
    } finally {
      await page.close()
    }
  }, 60_000)

  it('the page and the API answer on localhost only, and hostile names come back escaped', async () => {
    const res = await fetch(`${b.kagami.mirrorUrl}/ui?q=${encodeURIComponent('<script>x</script>:a')}`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-security-policy')).toMatch(/script-src 'nonce-/)
    const html = await res.text()
    expect(html).not.toContain('<script>x</script>')
    expect(html).toContain('&lt;script&gt;')
  })

  it('kagami status --image and --peers print the same facts', async () => {
    const aId = (await a.kagami.status()).peerId
    const out = await kagamiCli(['status', '--mirror-address', b.kagami.mirrorAddress, '--image', ref])
    expect(out).toContain(ref)
    expect(out).toContain(`peer ${aId}`)
    expect(out).toContain('this node: holds it')
    const peers = await kagamiCli(['status', '--mirror-address', b.kagami.mirrorAddress, '--peers'])
    const row = peers.split('\n').find((l) => l.startsWith(aId))
    expect(row).toMatch(/connected/)
    expect(row).not.toMatch(/ 0 B \//) // bytes fetched from A
    const summary = await kagamiCli(['status', '--mirror-address', b.kagami.mirrorAddress])
    expect(summary).toMatch(/ready:\s+yes/)
    expect(summary).toMatch(/containerd:\s+connected/)
    await mkdir(ARTIFACTS, { recursive: true })
    await writeFile(join(ARTIFACTS, 'kagami-status.txt'), [summary, peers, out].join('\n\n'))
  })

  it('metrics: peer traffic with the registry label, histograms by source, probes not counted', async () => {
    const registryLabel = `registry="${registry.host}"`
    const before = await scrape(b)
    for (let i = 0; i < 5; i++) {
      await fetch(`${b.kagami.mirrorUrl}/healthz`)
      await fetch(`${b.kagami.mirrorUrl}/readyz`)
      await fetch(`${b.kagami.mirrorUrl}/ui`)
    }
    const after = await scrape(b)
    // kept as artifacts: what a Prometheus scrape of each node looks like after a peer pull
    await mkdir(ARTIFACTS, { recursive: true })
    await writeFile(join(ARTIFACTS, 'metrics-b.txt'), after)
    await writeFile(join(ARTIFACTS, 'metrics-a.txt'), await scrape(a))
    const sumRequests = (text: string): number =>
      text
        .split('\n')
        .filter((l) => l.startsWith('kagami_requests_total{'))
        .reduce((s, l) => s + Number(l.split(' ').at(-1)), 0)
    expect(sumRequests(after)).toBe(sumRequests(before))

    // B's blobs were served by its mirror, with the registry label: from A as a peer, or (the herd may
    // have written them into B's containerd first) locally
    const servedBlobs = new RegExp(
      `^kagami_requests_total\\{server="mirror",kind="blob",source="(?:peer|local)",status="200",${registryLabel.replace(/[.]/g, '\\.')}\\} ([1-9]\\d*)`,
      'm',
    )
    expect(after).toMatch(servedBlobs)
    expect(after).toMatch(
      /^kagami_request_duration_seconds_count\{server="mirror",kind="blob",source="(?:peer|local)"\} [1-9]/m,
    )
    expect(after).toMatch(
      /^kagami_request_ttfb_seconds_count\{server="mirror",kind="manifest",source="peer"\} [1-9]/m,
    )
    expect(after).toMatch(/^kagami_containerd_connected 1$/m)
    expect(after).toMatch(/^kagami_pending_provides \d+$/m)
    expect(after).toMatch(/^kagami_peer_failures_total\{reason="DeadlineExceededError"\} 0$/m)
    const lastServe = Number(
      /^kagami_last_peer_serve_timestamp_seconds\{server="mirror"\} (\S+)$/m.exec(after)?.[1],
    )
    expect(lastServe).toBeGreaterThan(Date.now() / 1000 - 300)
    // A served B: its peer endpoint's timestamp moved too
    const aText = await scrape(a)
    expect(
      Number(/^kagami_last_peer_serve_timestamp_seconds\{server="peer"\} (\S+)$/m.exec(aText)?.[1]),
    ).toBeGreaterThan(0)
    // A's peer endpoint served B's pull (with the herd, blobs may also reach B's containerd through its own
    // kagami, so the count of blobs, not their bytes, is what is sure)
    expect(
      Number(
        new RegExp(
          `^kagami_requests_total\\{server="peer",kind="blob",source="local",status="200",${registryLabel.replace(/[.]/g, '\\.')}\\} (\\d+)`,
          'm',
        ).exec(aText)?.[1],
      ),
    ).toBeGreaterThanOrEqual(1)
  })

  it('every metric the Grafana dashboard and the alert rules query exists in a running daemon', async () => {
    const exposed = metricNamesIn(await scrape(b))
    const used = new Set([...(await dashboardMetricNames()), ...(await ruleMetricNames())])
    expect(used.size).toBeGreaterThan(10)
    const missing = [...used].filter((n) => !exposed.has(n))
    expect(missing).toEqual([])
  })

  it('containerd stops on B: the page, /status and the gauge say so and why; it comes back on its own', async () => {
    await b.containerd.stop()
    try {
      const down = await waitFor(
        async () => {
          const st = await b.kagami.status()
          return st.containerd.connected ? undefined : st
        },
        { timeoutMs: 20_000, what: "B's status to show containerd disconnected" },
      )
      expect(down.ready).toBe(false)
      expect(down.notReady.join(' ')).toMatch(/containerd is not connected/)
      expect(await scrape(b)).toMatch(/^kagami_containerd_connected 0$/m)
      const page = await browser!.newPage({ viewport: { width: 1280, height: 900 } })
      try {
        await page.goto(`${b.kagami.mirrorUrl}/ui`)
        const header = await page.locator('header').textContent()
        expect(header).toContain('NOT READY')
        expect(header).toContain('containerd DISCONNECTED')
        await expect(page.locator('#node .reasons').textContent()).resolves.toMatch(/containerd/)
        // the images it last advertised are still listed, marked as such
        await expect(page.locator('#images').textContent()).resolves.toContain(ref)
        await expect(page.locator('#images').textContent()).resolves.toContain('containerd unreachable')
        await page.screenshot({ path: join(ARTIFACTS, 'status-page-containerd-down.png') })
      } finally {
        await page.close()
      }
    } finally {
      await b.containerd.restart()
    }
    await waitFor(async () => (await b.kagami.status()).containerd.connected || undefined, {
      timeoutMs: 20_000,
      what: 'B to reconnect to containerd',
    })
  }, 60_000)

  it("A's kagami stops: B lists it as gone, says it is isolated, and kagami_peers drops to 0", async () => {
    const aId = (await a.kagami.status()).peerId
    await a.kagami.stop()
    const st = await waitFor(
      async () => {
        const s = await b.kagami.status()
        return s.gonePeers.some((p) => p.id === aId) ? s : undefined
      },
      { timeoutMs: 20_000, what: 'B to see A gone' },
    )
    expect(st.peers).toEqual([])
    expect(st.warnings.join(' ')).toMatch(/isolated/)
    expect(await scrape(b)).toMatch(/^kagami_peers 0$/m)
    const peers = await kagamiCli(['status', '--mirror-address', b.kagami.mirrorAddress, '--peers'])
    expect(peers.split('\n').find((l) => l.startsWith(aId))).toMatch(/ gone /)
  }, 60_000)
})
