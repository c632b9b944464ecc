import { readFile } from 'node:fs/promises'
import { Agent as HttpAgent } from 'node:http'
import { Agent as HttpsAgent } from 'node:https'
import { rootCertificates } from 'node:tls'
import { DOCKER_HUB, normalizeRegistry } from '../oci/index.js'
import { UpstreamConfigError } from './errors.js'

/**
 * One entry of `--registries`: `https://ghcr.io`, `http://127.0.0.1:5000`, and TLS settings as query
 * parameters on the same URL, so one list drives both `configure` and `run`:
 * `https://registry.corp:5000?ca=/etc/kagami/corp-ca.pem` or `https://registry.corp?insecure=true`.
 */
export interface RegistryEntry {
  /** Normalised registry host as containerd names it in `?ns=` (`docker.io`, `127.0.0.1:5000`). */
  registry: string
  /** Where its API lives: `https://registry-1.docker.io` for Docker Hub, else scheme + host of the entry. */
  baseUrl: string
  caFile?: string
  insecure: boolean
}

// Docker Hub's API does not answer on the name images use (containerd maps it the same way).
const API_HOSTS: Record<string, string> = { [DOCKER_HUB]: 'registry-1.docker.io' }

/** Parses one `--registries` entry. Throws UpstreamConfigError naming the entry when it is malformed. */
export function parseRegistryEntry(url: string): RegistryEntry {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new UpstreamConfigError(`invalid registry URL ${JSON.stringify(url)}`)
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new UpstreamConfigError(`registry URL ${JSON.stringify(url)} must be http:// or https://`)
  let caFile: string | undefined
  let insecure = false
  for (const [key, value] of u.searchParams) {
    if (key === 'ca' && value !== '') caFile = value
    else if (key === 'insecure' && (value === 'true' || value === 'false')) insecure = value === 'true'
    else
      throw new UpstreamConfigError(
        `registry URL ${JSON.stringify(url)}: unknown setting ${key} (use ?ca=<file> or ?insecure=true)`,
      )
  }
  const registry = normalizeRegistry(u.host)
  const host = API_HOSTS[registry] ?? u.host.toLowerCase()
  const entry: RegistryEntry = { registry, baseUrl: `${u.protocol}//${host}`, insecure }
  if (caFile !== undefined) entry.caFile = caFile
  return entry
}

/** How to reach one registry: its base URL and the HTTP agent carrying its TLS settings. */
export interface Endpoint {
  registry: string
  baseUrl: string
  agent: HttpAgent
}

const AGENT_OPTIONS = { keepAlive: true, maxSockets: 16, maxFreeSockets: 4, timeout: 60_000 }

/**
 * Maps a registry (as containerd names it in `?ns=`) to its endpoint. Listed registries use their scheme
 * and TLS settings; any other registry is `https://` with the system CAs, as containerd does without a
 * hosts.toml.
 */
export class Endpoints {
  private readonly byRegistry = new Map<string, Endpoint>()
  private readonly agents: HttpAgent[] = []
  private readonly defaultHttps: HttpsAgent

  private constructor(entries: { entry: RegistryEntry; ca?: string }[]) {
    this.defaultHttps = new HttpsAgent(AGENT_OPTIONS)
    this.agents.push(this.defaultHttps)
    for (const { entry, ca } of entries) {
      let agent: HttpAgent
      if (entry.baseUrl.startsWith('http:')) {
        agent = new HttpAgent(AGENT_OPTIONS)
      } else if (ca === undefined && !entry.insecure) {
        agent = this.defaultHttps
      } else {
        // `ca` replaces Node's bundled roots, so keep them: a token realm may live on a public host.
        agent = new HttpsAgent({
          ...AGENT_OPTIONS,
          ...(ca !== undefined ? { ca: [...rootCertificates, ca] } : {}),
          rejectUnauthorized: !entry.insecure,
        })
      }
      if (agent !== this.defaultHttps) this.agents.push(agent)
      this.byRegistry.set(entry.registry, { registry: entry.registry, baseUrl: entry.baseUrl, agent })
    }
  }

  /** Reads the CA files of the listed registries; a missing file fails start-up, naming the entry. */
  static async load(urls: readonly string[]): Promise<Endpoints> {
    const entries: { entry: RegistryEntry; ca?: string }[] = []
    for (const url of urls) {
      const entry = parseRegistryEntry(url)
      let ca: string | undefined
      if (entry.caFile !== undefined) {
        try {
          ca = await readFile(entry.caFile, 'utf8')
        } catch (err) {
          throw new UpstreamConfigError(
            `cannot read the CA file of registry ${url}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
          )
        }
      }
      entries.push({ entry, ca })
    }
    return new Endpoints(entries)
  }

  endpoint(registry: string): Endpoint {
    const listed = this.byRegistry.get(registry)
    if (listed !== undefined) return listed
    const host = API_HOSTS[registry] ?? registry
    return { registry, baseUrl: `https://${host}`, agent: this.defaultHttps }
  }

  /** The agent for a URL outside the registry's own host (a token realm): same TLS settings, its scheme. */
  agentFor(endpoint: Endpoint, url: URL): HttpAgent | undefined {
    const wantHttps = url.protocol === 'https:'
    const isHttps = endpoint.agent instanceof HttpsAgent
    if (wantHttps === isHttps) return endpoint.agent
    return wantHttps ? this.defaultHttps : undefined // node's global http agent
  }

  close(): void {
    for (const a of this.agents) a.destroy()
  }
}
