import { readFile } from 'node:fs/promises'
import { describe, expect, it } from 'vitest'
import { DASHBOARD, dashboardExprs, ruleExprs } from '../e2e/observability.js'
import { renderChart } from './render.js'

/** The dashboard and alerts the chart ships; that their metrics exist is checked against a running daemon in test/e2e/status-page.spec.ts. */
describe('chart: Grafana dashboard and PrometheusRule', () => {
  it('the dashboard JSON parses, panel ids are unique and every panel queries Prometheus', async () => {
    const d = JSON.parse(await readFile(DASHBOARD, 'utf8')) as {
      uid: string
      panels: { id: number; type: string; targets?: { expr: string }[] }[]
    }
    expect(d.uid).toBe('kagami-overview')
    const ids = d.panels.map((p) => p.id)
    expect(new Set(ids).size).toBe(ids.length)
    for (const p of d.panels.filter((x) => x.type !== 'row')) expect(p.targets?.length).toBeGreaterThan(0)
    expect((await dashboardExprs()).length).toBeGreaterThan(20)
  })

  it('off by default; enabled, the ConfigMap carries the dashboard for the sidecar and the rule has the three alerts', async () => {
    const off = await renderChart()
    expect(off.objects.filter((o) => o.kind === 'PrometheusRule')).toHaveLength(0)
    expect(off.objects.filter((o) => o.metadata.name.endsWith('-dashboard'))).toHaveLength(0)

    const { objects } = await renderChart([
      '--set',
      'prometheusRule.enabled=true',
      '--set',
      'grafanaDashboard.enabled=true',
    ])
    const cm = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name.endsWith('-dashboard')) as
      { metadata: { labels: Record<string, string> }; data: Record<string, string> } | undefined
    expect(cm?.metadata.labels.grafana_dashboard).toBe('1')
    expect(JSON.parse(cm?.data['kagami.json'] ?? '')).toEqual(JSON.parse(await readFile(DASHBOARD, 'utf8')))

    const rules = await ruleExprs()
    expect(rules.map((r) => r.alert)).toEqual([
      'KagamiNodeIsolated',
      'KagamiContainerdDisconnected',
      'KagamiMissRatioHighWhileUpstreamErrors',
    ])
    const isolated = objects
      .filter((o) => o.kind === 'PrometheusRule')
      .flatMap((o) => (o.spec as { groups: { rules: { alert: string; for: string }[] }[] }).groups)
      .flatMap((g) => g.rules)
      .find((r) => r.alert === 'KagamiNodeIsolated')
    expect(isolated?.for).toBe('5m')
  })
})
