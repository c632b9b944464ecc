/**
 * Writes charts/kagami/values.schema.json from the zod schema in src/config.ts, so `helm install` rejects
 * a bad `config` value with the same rules the daemon applies. `--check` fails when the file is stale.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { z } from 'zod'
import { runSchema } from '../src/config.js'

const OUT = fileURLToPath(new URL('../charts/kagami/values.schema.json', import.meta.url))

export function valuesSchema(): unknown {
  const config = z.toJSONSchema(runSchema.partial(), { target: 'draft-7', io: 'input' }) as Record<
    string,
    unknown
  >
  delete config.$schema
  const port = { type: 'integer', minimum: 1, maximum: 65535 }
  const path = { type: 'string', minLength: 1 }
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title: 'kagami chart values',
    type: 'object',
    properties: {
      config: { ...config, description: 'kagami run settings (camelCase flag names); see src/config.ts' },
      // the same entries as `config.registries` (the chart passes this list to both configure and run)
      registries: (config.properties as Record<string, unknown>).registries,
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
      psk: { type: 'object', properties: { secretName: { type: 'string' }, secretKey: { type: 'string' } } },
      cleanup: {
        type: 'object',
        properties: {
          enabled: { type: 'boolean' },
          kubectlImage: { type: 'string' },
          timeoutSeconds: { type: 'integer', minimum: 1 },
        },
      },
      serviceMonitor: { type: 'object', properties: { enabled: { type: 'boolean' } } },
    },
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
