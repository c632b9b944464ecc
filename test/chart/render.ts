import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseAllDocuments } from 'yaml'
import { run } from '../harness/index.js'

const RENDER_SRC = fileURLToPath(new URL('./render/', import.meta.url))
export const CHART_DIR = fileURLToPath(new URL('../../charts/kagami/', import.meta.url))

/** Builds the Go renderer (text/template + sprig, Helm's engine) once per source version. */
async function renderer(): Promise<string> {
  const source = await readFile(join(RENDER_SRC, 'main.go'))
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 16)
  const dir = join(tmpdir(), 'kagami-chart-render')
  const bin = join(dir, `render-${hash}`)
  if (!existsSync(bin)) {
    await mkdir(dir, { recursive: true })
    await run('go', ['build', '-o', bin, '.'], {
      cwd: RENDER_SRC,
      env: {
        ...process.env,
        GO111MODULE: 'off',
        GOPATH: '/usr/share/gocode',
        GOCACHE: join(dir, 'gocache'),
        HOME: process.env.HOME ?? dir,
      },
      timeoutMs: 180_000,
    })
  }
  return bin
}

export interface K8sObject {
  apiVersion: string
  kind: string
  metadata: { name: string; namespace?: string; annotations?: Record<string, string> }
  [key: string]: unknown
}

export async function renderChart(args: string[] = []): Promise<{ objects: K8sObject[]; notes: string }> {
  const bin = await renderer()
  const { execFile } = await import('node:child_process')
  const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) =>
    execFile(bin, [CHART_DIR, ...args], { maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) =>
      err ? reject(new Error(`render failed: ${stderr || err.message}`)) : resolve({ stdout, stderr }),
    ),
  )
  const objects = parseAllDocuments(stdout)
    .map((d) => {
      if (d.errors.length > 0) throw new Error(`rendered YAML does not parse: ${d.errors[0]?.message}`)
      return d.toJSON() as K8sObject | null
    })
    .filter((o): o is K8sObject => o !== null)
  return { objects, notes: stderr }
}
