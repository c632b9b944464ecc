import { run } from '../test/harness/index.js'

export interface Stats {
  min: number
  p50: number
  p99: number
  max: number
  n: number
}

export function stats(values: number[]): Stats {
  const s = [...values].sort((a, b) => a - b)
  const at = (q: number): number => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? NaN
  return { min: s[0] ?? NaN, p50: at(0.5), p99: at(0.99), max: s[s.length - 1] ?? NaN, n: s.length }
}

export const median = (values: number[]): number => stats(values).p50

export interface CurlResult {
  status: number
  bytes: number
  seconds: number
  ttfbSeconds: number
}

/** One HTTP GET with curl (the same client for every contender), body discarded. */
export async function curl(url: string, headers: string[] = [], timeoutS = 120): Promise<CurlResult> {
  const out = await run('curl', [
    '-s',
    '-o',
    '/dev/null',
    '--max-time',
    String(timeoutS),
    ...headers.flatMap((h) => ['-H', h]),
    '-w',
    '%{http_code} %{size_download} %{time_total} %{time_starttransfer}',
    url,
  ])
  const [status, bytes, total, ttfb] = out.trim().split(' ').map(Number) as [number, number, number, number]
  return { status, bytes, seconds: total, ttfbSeconds: ttfb }
}

export const GiB = 1024 ** 3
export const MiB = 1024 ** 2

export function log(line: string): void {
  process.stderr.write(`${line}\n`)
}
