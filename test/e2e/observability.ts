import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CHART_DIR, renderChart } from '../chart/render.js'

/**
 * Metric names a scrape exposes: every sample's name, plus every `# TYPE` (a labelled counter nobody has
 * incremented yet is registered but has no sample); histograms as their `_bucket`/`_sum`/`_count` series.
 */
export function metricNamesIn(exposition: string): Set<string> {
  const names = new Set<string>()
  for (const line of exposition.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)/.exec(line)
    if (type !== null) {
      const [, name, kind] = type as unknown as [string, string, string]
      names.add(name)
      if (kind === 'histogram' || kind === 'summary')
        for (const s of ['_bucket', '_sum', '_count']) names.add(name + s)
    }
    if (line === '' || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line)
    if (m?.[1] !== undefined) names.add(m[1])
  }
  return names
}

/** Metric names in a PromQL expression: label matchers, strings and ranges stripped, our prefixes kept. */
export function metricNamesInPromQL(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, '')
    .replace(/\[[^\]]*\]/g, '')
  return [...bare.matchAll(/\b((?:kagami|process|nodejs)_[a-zA-Z0-9_]+)\b/g)].map((m) => m[1] as string)
}

export const DASHBOARD = join(CHART_DIR, 'dashboards', 'kagami.json')

interface Panel {
  targets?: { expr?: string }[]
  panels?: Panel[]
}

/** Every PromQL expression in the dashboard (panels, nested rows, template variables). */
export async function dashboardExprs(): Promise<string[]> {
  const dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8')) as {
    panels: Panel[]
    templating?: { list?: { query?: string | { query?: string } }[] }
  }
  const out: string[] = []
  const walk = (panels: Panel[]): void => {
    for (const p of panels) {
      for (const t of p.targets ?? []) if (t.expr !== undefined) out.push(t.expr)
      walk(p.panels ?? [])
    }
  }
  walk(dashboard.panels)
  for (const v of dashboard.templating?.list ?? []) {
    const q = typeof v.query === 'string' ? v.query : v.query?.query
    if (q !== undefined && q.includes('(')) out.push(q)
  }
  return out
}

export async function dashboardMetricNames(): Promise<string[]> {
  return (await dashboardExprs()).flatMap(metricNamesInPromQL)
}

/** The PrometheusRule the chart renders when `prometheusRule.enabled`, as its alert expressions. */
export async function ruleExprs(): Promise<{ alert: string; expr: string }[]> {
  const { objects } = await renderChart(['--set', 'prometheusRule.enabled=true'])
  const rule = objects.find((o) => o.kind === 'PrometheusRule')
  if (rule === undefined) throw new Error('the chart rendered no PrometheusRule')
  const spec = rule.spec as { groups: { rules: { alert: string; expr: string }[] }[] }
  return spec.groups.flatMap((g) => g.rules)
}

export async function ruleMetricNames(): Promise<string[]> {
  return (await ruleExprs()).flatMap((r) => metricNamesInPromQL(r.expr))
}
