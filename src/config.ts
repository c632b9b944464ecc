import { readFile } from 'node:fs/promises'
import { isIP } from 'node:net'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import { multiaddr } from '@multiformats/multiaddr'
import { ConfigError } from './config-error.js'

/**
 * The one source of every setting. Commander flags (`--resolve-timeout`), env vars
 * (`KAGAMI_RESOLVE_TIMEOUT`), the config file keys and `charts/kagami/values.schema.json` are all derived
 * from these schemas. Precedence: defaults < file < env < flags.
 */

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** `"20ms"`, `"1.5s"`, `"15m"`, `"1h"`, or a number of milliseconds. */
export const duration = z
  .union([
    z.number().int().nonnegative(),
    z.string().regex(/^\d+(\.\d+)?(ms|s|m|h)$/, 'a duration like "20ms", "1s", "15m" or "1h"'),
  ])
  .transform((v) => {
    if (typeof v === 'number') return v
    const [, n, unit] = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(v) as unknown as [string, string, string]
    return Math.round(Number(n) * (UNIT_MS[unit] as number))
  })

const UNIT_BYTES: Record<string, number> = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 }

/** `"64MiB"`, `"1GiB"`, `"512KiB"`, or a number of bytes. */
export const byteSize = z
  .union([
    z.number().int().nonnegative(),
    z.string().regex(/^\d+(\.\d+)?(B|KiB|MiB|GiB)?$/, 'a size like "64MiB", "1GiB" or a number of bytes'),
  ])
  .transform((v) => {
    if (typeof v === 'number') return v
    const [, n, unit] = /^(\d+(?:\.\d+)?)(B|KiB|MiB|GiB)?$/.exec(v) as unknown as [string, string, string?]
    return Math.round(Number(n) * (UNIT_BYTES[unit ?? 'B'] as number))
  })

/** `host:port`, where host is an IPv4 address, a name, or a bracketed IPv6 address; port 0–65535. */
export const hostPort = z
  .string()
  .regex(/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/, 'host:port, e.g. 127.0.0.1:29020')
  .refine((v) => Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, 'port must be 0–65535')

/** A bare host: an IPv4 or (unbracketed) IPv6 address, or a DNS name, as Kubernetes' `status.hostIP` gives it. */
const bareHost = z
  .string()
  .refine((v) => isIP(v) !== 0 || /^[A-Za-z0-9.-]+$/.test(v), 'an IP address or a name')

const multiaddrString = z.string().refine((v) => {
  try {
    multiaddr(v)
    return v.startsWith('/')
  } catch {
    return false
  }
}, 'a multiaddr, e.g. /ip4/0.0.0.0/tcp/29022')

/** A static multiaddr (`/ip4/…/tcp/…/p2p/…`) or `dns:<name>:<port>` (all addresses of name). */
const bootstrapEntry = z
  .string()
  .regex(/^(dns:[A-Za-z0-9.-]+:\d{1,5}|\/.+)$/, 'a multiaddr or dns:<name>:<port>')
  .superRefine((v, ctx) => {
    if (!v.startsWith('dns:')) {
      if (!multiaddrString.safeParse(v).success)
        ctx.addIssue({ code: 'custom', message: 'a multiaddr or dns:<name>:<port>' })
      return
    }
    const m = /^dns:[A-Za-z0-9.-]+:(\d{1,5})$/.exec(v)
    if (m === null) ctx.addIssue({ code: 'custom', message: 'dns:<name>:<port>' })
    else if (Number(m[1]) < 1 || Number(m[1]) > 65535)
      ctx.addIssue({ code: 'custom', message: 'dns:<name>:<port> with a port from 1 to 65535' })
  })

// `?ca=<file>` and `?insecure=true` carry a registry's TLS settings for `run` (src/upstream/endpoints.ts).
const registryUrl = z
  .string()
  .regex(
    /^https?:\/\/[^/\s?#]+\/?(\?(ca=[^&\s#]+|insecure=(true|false))(&(ca=[^&\s#]+|insecure=(true|false)))*)?$/,
    'a registry URL like https://docker.io, http://127.0.0.1:5000 or https://reg.corp?ca=/etc/ca.pem',
  )

const glob = z.string().min(1).max(512)

export const runSchema = z
  .object({
    containerdAddress: z
      .string()
      .min(1)
      .default('/run/containerd/containerd.sock')
      .describe('containerd gRPC socket'),
    containerdNamespace: z
      .string()
      .min(1)
      .default('k8s.io')
      .describe('containerd namespace to read images from'),
    containerdContentDir: z
      .string()
      .default('/var/lib/containerd/io.containerd.content.v1.content')
      .describe('containerd content dir, read directly when readable (fast path); empty disables it'),
    // Ports sit below the NodePort range (30000–32767, where kube-proxy rewrites traffic to node IPs and
    // 127.0.0.1) and below Linux's ephemeral range (32768+); see the chart README for the migration note.
    mirrorAddress: hostPort
      .default('127.0.0.1:29020')
      .describe('address of the registry mirror containerd asks'),
    peerAddress: hostPort
      .default('[::]:29021')
      .describe('address of the peer endpoint other nodes fetch from (serves only local content)'),
    peerAdvertiseAddress: z
      .union([hostPort, bareHost, z.literal('')])
      .default('')
      .describe(
        'host[:port] other nodes use to reach the peer endpoint (a bare IPv6 address is bracketed; no port = the peer port); default: peer address (with the p2p host when bound to every interface)',
      ),
    p2pAddress: z
      .array(multiaddrString)
      .min(1)
      .default(['/ip4/0.0.0.0/tcp/29022', '/ip6/::/tcp/29022'])
      .describe('libp2p listen multiaddrs for the DHT (an IPv6 one is skipped where the host has no IPv6)'),
    bootstrap: z
      .array(bootstrapEntry)
      .default([])
      .describe('bootstrap peers: multiaddrs or dns:<name>:<port>'),
    registries: z
      .array(registryUrl)
      .default([])
      .describe(
        'registries as in configure: http:// or https:// (and ?ca=<file>, ?insecure=true) for asking them for tags; unlisted registries are asked over https',
      ),
    include: z
      .array(glob)
      .default([])
      .describe('only advertise and serve repositories matching these globs (registry/repo)'),
    exclude: z.array(glob).default([]).describe('never advertise or serve repositories matching these globs'),
    resolveTimeout: duration
      .prefault('20ms')
      .describe('how long the mirror looks for a peer before answering 404'),
    outageResolveTimeout: duration
      .prefault('2s')
      .describe(
        'how long it looks while the upstream registry does not answer tag lookups (a 404 then fails the pull: a peer found on the DHT is worth the wait)',
      ),
    peerHeadersTimeout: duration.prefault('1s').describe('deadline for a peer to send response headers'),
    bodyIdleTimeout: duration
      .prefault('5s')
      .describe('abort a peer body that makes no progress for this long'),
    stripeThreshold: byteSize
      .prefault('64MiB')
      .describe(
        'blobs at least this big, held by two or more peers, are fetched as parallel ranges from several of them (striping); 0 turns it off',
      ),
    stripeBelowRate: byteSize
      .prefault('256MiB')
      .describe(
        'a big blob is striped only when its one peer sends the first bytes slower than this per second (striping is for slow links; a fast stream on a busy CPU loses more than it gains)',
      ),
    herd: z
      .boolean()
      .default(true)
      .describe(
        'one upstream fetch per blob cluster-wide: a miss asks the node elected for that blob, which fetches it once and serves every node while it arrives',
      ),
    herdBudget: duration
      .prefault('1s')
      .describe(
        'how long a blob miss waits for the elected node before the 404 that sends containerd upstream, on a quiet node',
      ),
    herdBudgetMax: duration
      .prefault('3s')
      .describe(
        'the most that wait rises to while elected nodes answer slowly or this node is busy (the longest a frozen elected node can hold a pull up)',
      ),
    upstreamTagTimeout: duration
      .prefault('1.5s')
      .describe('budget for asking the upstream registry what a tag points to (token fetch included)'),
    upstreamBackoff: duration
      .prefault('5s')
      .describe('after an upstream failure, serve tags without asking it for this long'),
    resolveTagsFromPeers: z
      .enum(['never', 'fallback', 'always'])
      .default('fallback')
      .describe(
        'tags from peers: fallback = only while upstream does not answer; never = upstream or this node only; always = never ask upstream',
      ),
    resyncInterval: duration.prefault('60s').describe('full store-to-DHT resync interval'),
    reprovideInterval: duration
      .prefault('15m')
      .describe(
        'how often provider records are refreshed; stretched with the cluster size once it outgrows the key exchange (up to 4x, at most 80% of recordValidity)',
      ),
    recordValidity: duration
      .prefault('75m')
      .describe('how long a provider record stored for another node stays valid'),
    stateDir: z.string().min(1).default('/var/lib/kagami').describe('persistent state (libp2p identity)'),
    pskFile: z
      .string()
      .default('')
      .describe(
        'private-network key shared by the cluster (64 hex chars or a libp2p swarm.key); empty = open network, for development only',
      ),
    peerAuth: z
      .enum(['required', 'off'])
      .default('required')
      .describe('peer endpoint requests must be signed by a connected member; off only for benchmarks'),
    logLevel: z
      .enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal'])
      .default('info')
      .describe('log level'),
  })
  .strict()

export const configureSchema = z
  .object({
    configPath: z
      .string()
      .min(1)
      .default('/etc/containerd/certs.d')
      .describe('containerd registry config_path (hosts.toml dirs)'),
    mirrorUrl: z.string().url().default('http://127.0.0.1:29020').describe('URL of the local kagami mirror'),
    registries: z.array(registryUrl).default([]).describe('registries to write a hosts.toml for'),
    allRegistries: z
      .boolean()
      .default(false)
      .describe('also write _default/hosts.toml, mirroring every registry'),
    dialTimeout: duration.prefault('200ms').describe('containerd dial timeout for the mirror'),
  })
  .strict()

export type RunConfig = Readonly<z.output<typeof runSchema>>
export type ConfigureConfig = Readonly<z.output<typeof configureSchema>>

export type FieldKind = 'string' | 'array' | 'boolean'

export interface FieldInfo {
  key: string
  flag: string
  env: string
  kind: FieldKind
  description: string
  defaultValue: unknown
}

/** Lists a schema's settings with their derived flag and env names. */
export function fields(schema: z.ZodObject): FieldInfo[] {
  return Object.entries(schema.shape).map(([key, type]) => {
    const t = type as z.ZodType
    const json = z.toJSONSchema(t, { io: 'input', unrepresentable: 'any' }) as {
      type?: string
      default?: unknown
    }
    const kind: FieldKind = json.type === 'array' ? 'array' : json.type === 'boolean' ? 'boolean' : 'string'
    const kebab = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)
    return {
      key,
      flag: `--${kebab}`,
      env: `KAGAMI_${kebab.replace(/-/g, '_').toUpperCase()}`,
      kind,
      description: t.description ?? '',
      defaultValue: json.default,
    }
  })
}

// in its own file so the daemon can name it without loading zod (src/run-parsed.ts)
export { ConfigError } from './config-error.js'

/** Reads `KAGAMI_*` variables for a schema. Arrays are comma-separated. */
export function fromEnv(schema: z.ZodObject, env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const f of fields(schema)) {
    const raw = env[f.env]
    if (raw === undefined) continue
    if (f.kind === 'array')
      out[f.key] = raw
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== '')
    else if (f.kind === 'boolean') out[f.key] = raw === 'true' || raw === '1'
    else out[f.key] = raw
  }
  return out
}

export async function fromFile(path: string): Promise<Record<string, unknown>> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new ConfigError(
      `cannot read config file ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    )
  }
  let doc: unknown
  try {
    doc = parseYaml(text) // YAML is a superset of JSON
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid YAML/JSON: ${(err as Error).message}`)
  }
  if (doc === null || doc === undefined) return {}
  if (typeof doc !== 'object' || Array.isArray(doc))
    throw new ConfigError(`config file ${path} must hold a mapping`)
  return doc as Record<string, unknown>
}

/** Validates merged layers (defaults < file < env < flags) and freezes the result. */
export function parseConfig<S extends z.ZodObject>(
  schema: S,
  ...layers: Record<string, unknown>[]
): Readonly<z.output<S>> {
  const merged = Object.assign(
    {},
    ...layers.map((l) => Object.fromEntries(Object.entries(l).filter(([, v]) => v !== undefined))),
  )
  const result = schema.safeParse(merged)
  if (!result.success) {
    const byKey = new Map(fields(schema).map((f) => [f.key, f]))
    const issue = result.error.issues[0] as z.core.$ZodIssue
    const key = String(issue.path[0] ?? '')
    const f = byKey.get(key)
    const where =
      f !== undefined ? `${f.flag} (${f.env})` : issue.code === 'unrecognized_keys' ? 'config' : key
    throw new ConfigError(`invalid ${where}: ${issue.message}`)
  }
  return Object.freeze(result.data) as Readonly<z.output<S>>
}
