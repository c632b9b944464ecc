import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Ajv, type ValidateFunction } from 'ajv'
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

async function execRenderer(args: string[]): Promise<{ stdout: string; stderr: string }> {
  const bin = await renderer()
  const { execFile } = await import('node:child_process')
  return await new Promise<{ stdout: string; stderr: string }>((resolve, reject) =>
    execFile(bin, [CHART_DIR, ...args], { maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) =>
      err ? reject(new Error(`render failed: ${stderr || err.message}`)) : resolve({ stdout, stderr }),
    ),
  )
}

/** The coalesced values (values.yaml < -f files < --set), as Helm checks them against values.schema.json. */
export async function renderValues(args: string[] = []): Promise<Record<string, unknown>> {
  return JSON.parse((await execRenderer([...args, '--dump-values'])).stdout) as Record<string, unknown>
}

export class ValuesSchemaError extends Error {
  override name = 'ValuesSchemaError'
}

let validator: ValidateFunction | undefined

/** Validates values with values.schema.json and a real JSON-schema validator (ajv), as `helm install` does. */
export async function checkValues(values: unknown): Promise<void> {
  if (validator === undefined) {
    const schema = JSON.parse(await readFile(join(CHART_DIR, 'values.schema.json'), 'utf8')) as object
    validator = new Ajv({ allErrors: true, strict: false }).compile(schema)
  }
  if (!validator(values)) {
    const errors = (validator.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? ''}`.trim())
    throw new ValuesSchemaError(`values.schema.json rejects the values: ${errors.join('; ')}`)
  }
}

/** What `helm install` does: coalesce values, validate them against the schema, then render. */
export async function helmTemplate(args: string[] = []): Promise<{ objects: K8sObject[]; notes: string }> {
  await checkValues(await renderValues(args))
  return await renderChart(args)
}

export async function renderChart(args: string[] = []): Promise<{ objects: K8sObject[]; notes: string }> {
  const { stdout, stderr } = await execRenderer(args)
  const objects = parseAllDocuments(stdout)
    .map((d) => {
      if (d.errors.length > 0) throw new Error(`rendered YAML does not parse: ${d.errors[0]?.message}`)
      return d.toJSON() as K8sObject | null
    })
    .filter((o): o is K8sObject => o !== null)
  return { objects, notes: stderr }
}
