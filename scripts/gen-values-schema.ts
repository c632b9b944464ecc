/**
 * Writes charts/kagami/values.schema.json from the zod schema in src/config.ts, so `helm install` rejects
 * a bad `config` value with the same rules the daemon applies. `--check` fails when the file is stale.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { z } from 'zod'
import { runSchema } from '../src/config.js'

const OUT = fileURLToPath(new URL('../charts/kagami/values.schema.json', import.meta.url))

/**
 * Settings the chart derives from other values (paths, ports, registries, the node's address): the mounts,
 * probes and hosts.toml are built from the same values, so `config` must not override them.
 */
export const DERIVED_KEYS = [
  'containerdAddress',
  'containerdNamespace',
  'containerdContentDir',
  'mirrorAddress',
  'peerAddress',
  'peerAdvertiseAddress',
  'p2pAddress',
  'bootstrap',
  'registries',
  'stateDir',
  'pskFile',
] as const

export function valuesSchema(): unknown {
  const settable = runSchema.omit(Object.fromEntries(DERIVED_KEYS.map((k) => [k, true])) as never).partial()
  const config = z.toJSONSchema(settable, { target: 'draft-7', io: 'input' }) as Record<string, unknown>
  const full = z.toJSONSchema(runSchema, { target: 'draft-7', io: 'input' }) as Record<string, unknown>
  delete config.$schema
  const port = { type: 'integer', minimum: 1, maximum: 65535 }
  const path = { type: 'string', minLength: 1 }
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title: 'kagami chart values',
    type: 'object',
    properties: {
      config: {
        ...config,
        description: `kagami run settings (camelCase flag names); see src/config.ts. Derived from other values, not settable here: ${DERIVED_KEYS.join(', ')}`,
      },
      // the same entries as `config.registries` (the chart passes this list to both configure and run)
      registries: {
        ...((full.properties as Record<string, unknown>).registries as Record<string, unknown>),
        uniqueItems: true,
      },
      allRegistries: { type: 'boolean' },
      ports: {
        type: 'object',
        properties: { mirror: port, peer: port, p2p: port },
        required: ['mirror', 'peer', 'p2p'],
        additionalProperties: false,
      },
      containerd: {
        type: 'object',
        properties: { socket: path, namespace: path, contentDir: { type: 'string' }, configPath: path },
        required: ['socket', 'namespace', 'configPath'],
        additionalProperties: false,
      },
      stateDir: path,
      psk: {
        type: 'object',
        properties: {
          enabled: { type: 'boolean' },
          secretName: { type: 'string' },
          secretKey: { type: 'string', minLength: 1 },
        },
        additionalProperties: false,
      },
      configure: {
        type: 'object',
        properties: { enabled: { type: 'boolean' }, resources: { type: 'object' } },
        additionalProperties: false,
      },
      cleanup: {
        type: 'object',
        properties: {
          enabled: { type: 'boolean' },
          timeoutSeconds: { type: 'integer', minimum: 1 },
        },
        additionalProperties: false,
      },
      startupProbe: {
        type: 'object',
        properties: {
          periodSeconds: { type: 'integer', minimum: 1 },
          failureThreshold: { type: 'integer', minimum: 1 },
        },
      },
      serviceMonitor: { type: 'object', properties: { enabled: { type: 'boolean' } } },
    },
    // `kagami configure` needs at least one registry (or `_default`): an empty list would put every node in
    // Init:CrashLoopBackOff, so it is rejected at install time unless the init container is switched off.
    if: {
      properties: {
        configure: { properties: { enabled: { const: true } } },
        allRegistries: { const: false },
      },
    },
    then: { properties: { registries: { minItems: 1 } }, required: ['registries'] },
  }
}

export function renderValuesSchema(): string {
  return `${JSON.stringify(valuesSchema(), null, 2)}\n`
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const text = renderValuesSchema()
  if (process.argv.includes('--check')) {
    const current = await readFile(OUT, 'utf8').catch(() => '')
    if (current !== text) {
      console.error('charts/kagami/values.schema.json is stale: run npx tsx scripts/gen-values-schema.ts')
      process.exit(1)
    }
  } else {
    await writeFile(OUT, text)
    console.log(`wrote ${OUT}`)
  }
}
