import { readdir, readFile } from 'node:fs/promises'
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

/**
 * CPU seconds used so far by this process and every process it started (containerd, kagami, registry, ctr):
 * live descendants from /proc, plus what the ones already reaped left in their parents' cutime/cstime. A scenario
 * reads it before and after to tell whether it was bound by the machine's cores rather than by the design.
 */
export async function treeCpuSeconds(root = process.pid): Promise<number> {
  const tick = 100 // USER_HZ on Linux
  const stats = new Map<number, { ppid: number; own: number; reaped: number }>()
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const text = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => undefined)
    if (text === undefined) continue
    // fields after the command name, which may contain spaces: state ppid … utime(14) stime cutime cstime
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ')
    const n = (i: number): number => Number(f[i - 3])
    stats.set(Number(name), { ppid: n(4), own: n(14) + n(15), reaped: n(16) + n(17) })
  }
  const children = new Map<number, number[]>()
  for (const [pid, s] of stats) children.set(s.ppid, [...(children.get(s.ppid) ?? []), pid])
  let ticks = 0
  const visit = (pid: number): void => {
    const s = stats.get(pid)
    if (s === undefined) return
    ticks += s.own + s.reaped
    for (const c of children.get(pid) ?? []) visit(c)
  }
  visit(root)
  return ticks / tick
}
