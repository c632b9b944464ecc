import type { HistoryBucket } from '../registry/activity.js'
import { formatBytes } from '../status.js'

export interface Series {
  label: string
  color: string
  value: (b: HistoryBucket) => number
}

export interface ChartInit {
  title: string
  series: Series[]
  format: (n: number) => string
  /** A 0..1 line over the bars (the hit ratio), drawn where defined. */
  ratio?: { label: string; color: string; value: (b: HistoryBucket) => number | undefined }
  width?: number
  height?: number
}

const fmt = (n: number): string => (Number.isInteger(n) ? String(n) : n.toFixed(1))

/**
 * A stacked bar chart as inline SVG, rendered on the server: no chart library, nothing fetched at run
 * time, and it shows without JavaScript. One bar per history bucket, oldest on the left.
 */
export function stackedBars(buckets: HistoryBucket[], bucketMs: number, init: ChartInit): string {
  const width = init.width ?? 560
  const height = init.height ?? 110
  const top = 8
  const bottom = 18
  const left = 4
  const plotH = height - top - bottom
  const totals = buckets.map((b) => init.series.reduce((sum, s) => sum + s.value(b), 0))
  const max = Math.max(1, ...totals)
  const step = (width - left * 2) / Math.max(1, buckets.length)
  const barW = Math.max(1, step - 1)
  const rects: string[] = []
  buckets.forEach((b, i) => {
    let y = top + plotH
    for (const s of init.series) {
      const v = s.value(b)
      if (v <= 0) continue
      const h = Math.max(1, (v / max) * plotH)
      y -= h
      rects.push(
        `<rect x="${fmt(left + i * step)}" y="${fmt(y)}" width="${fmt(barW)}" height="${fmt(h)}" fill="${s.color}"><title>${s.label}: ${init.format(v)}</title></rect>`,
      )
    }
  })
  if (init.ratio !== undefined) {
    const r = init.ratio
    const points = buckets
      .map((b, i) => {
        const v = r.value(b)
        return v === undefined
          ? undefined
          : `${fmt(left + i * step + barW / 2)},${fmt(top + (1 - v) * plotH)}`
      })
      .filter((p): p is string => p !== undefined)
    if (points.length > 0) {
      rects.push(
        `<polyline points="${points.join(' ')}" fill="none" stroke="${r.color}" stroke-width="1.5"/>`,
        ...points.map((p) => {
          const [x, y] = p.split(',')
          return `<circle cx="${x}" cy="${y}" r="2" fill="${r.color}"/>`
        }),
      )
    }
  }
  const minutes = Math.round((buckets.length * bucketMs) / 60_000)
  const sums = init.series.map((s) => buckets.reduce((sum, b) => sum + s.value(b), 0))
  const legend = init.series
    .map(
      (s, i) =>
        `<span class="key"><i style="background:${s.color}"></i>${s.label} ${init.format(sums[i] ?? 0)}</span>`,
    )
    .join(' ')
  const ratioKey =
    init.ratio === undefined
      ? ''
      : ` <span class="key"><i style="background:${init.ratio.color};height:3px"></i>${init.ratio.label} (0–100%)</span>`
  return `<figure class="chart"><figcaption>${init.title} <small>(last ${minutes} min, per ${Math.round(bucketMs / 1000)} s)</small></figcaption>
<svg viewBox="0 0 ${width} ${height}" width="100%" role="img" aria-label="${init.title}">
<line x1="${left}" y1="${top + plotH + 0.5}" x2="${width - left}" y2="${top + plotH + 0.5}" stroke="#bbb"/>
<text x="${left}" y="${top + 8}" class="axis">max ${init.format(max)}</text>
${rects.join('\n')}
<text x="${left}" y="${height - 4}" class="axis">−${minutes} min</text>
<text x="${width - left}" y="${height - 4}" class="axis" text-anchor="end">now</text>
</svg><div class="legend">${legend}${ratioKey}</div></figure>`
}

export function requestsChart(buckets: HistoryBucket[], bucketMs: number): string {
  return stackedBars(buckets, bucketMs, {
    title: 'Mirror requests by source',
    format: (n) => `${n}`,
    ratio: {
      label: 'hit ratio',
      color: '#333',
      value: (b) =>
        b.local + b.peer + b.miss === 0 ? undefined : (b.local + b.peer) / (b.local + b.peer + b.miss),
    },
    series: [
      { label: 'local', color: '#5b8def', value: (b) => b.local },
      { label: 'from peers', color: '#2e9e5b', value: (b) => b.peer },
      { label: 'misses', color: '#d9534f', value: (b) => b.miss },
    ],
  })
}

export function bytesChart(buckets: HistoryBucket[], bucketMs: number): string {
  return stackedBars(buckets, bucketMs, {
    title: 'Bytes served by source',
    format: formatBytes,
    series: [
      { label: 'local', color: '#5b8def', value: (b) => b.bytesLocal },
      { label: 'from peers', color: '#2e9e5b', value: (b) => b.bytesPeer },
    ],
  })
}
