import { parse, stringify } from 'smol-toml'

/** First line of every hosts.toml kagami writes; how `configure` and `cleanup` recognise their own files. */
export const MANAGED_MARKER =
  '# Managed by kagami (kagami configure). `kagami cleanup` restores the previous file.'

export interface RegistryTarget {
  /** Directory name under config_path: `docker.io`, `127.0.0.1:5000`, or `_default`. */
  dir: string
  /** Upstream URL for `server =`, tried after the mirror; undefined for `_default`. */
  server?: string
  /** From the entry's `?ca=<file>` / `?insecure=true`: containerd's TLS settings for `server`. */
  ca?: string
  skipVerify?: boolean
}

/** Maps a registry URL to its certs.d directory and upstream server. Docker Hub's API lives elsewhere. */
export function registryTarget(url: string): RegistryTarget {
  const u = new URL(url)
  const host = u.host.toLowerCase()
  // the same TLS settings `kagami run` uses for this registry (src/upstream/endpoints.ts)
  const tls: Pick<RegistryTarget, 'ca' | 'skipVerify'> = {}
  const ca = u.searchParams.get('ca')
  if (ca !== null && ca !== '') tls.ca = ca
  if (u.searchParams.get('insecure') === 'true') tls.skipVerify = true
  if (host === 'docker.io' || host === 'registry-1.docker.io' || host === 'index.docker.io') {
    return { dir: 'docker.io', server: 'https://registry-1.docker.io', ...tls }
  }
  return { dir: host, server: `${u.protocol}//${host}`, ...tls }
}

export interface HostsTomlInit {
  mirrorUrl: string
  server?: string
  dialTimeoutMs: number
  /** TLS settings for `server` from the registry entry; a previous file's own settings win. */
  ca?: string
  skipVerify?: boolean
  /**
   * An existing (user) hosts.toml to keep: every top-level setting (`server`, and the `ca`, `client`,
   * `skip_verify`, `[header]`… that apply to it) is carried over, and its `[host]` entries follow the mirror.
   */
  previous?: string
}

/**
 * Renders hosts.toml with the mirror first. `capabilities` is always set: without it containerd would also
 * push to the mirror. A previous file's hosts stay in their order after ours; its `server` wins over ours and
 * its other top-level settings stay, or upstream TLS and auth would break while kagami is installed.
 */
export function renderHostsToml(init: HostsTomlInit): string {
  let previous: Record<string, unknown> = {}
  if (init.previous !== undefined) {
    try {
      previous = parse(init.previous)
    } catch {
      previous = {} // an unparsable file is ignored by containerd too; it stays in the backup
    }
  }
  const prevHosts = (
    typeof previous.host === 'object' && previous.host !== null ? previous.host : {}
  ) as Record<string, unknown>
  const hosts: Record<string, unknown> = {
    [init.mirrorUrl]: { capabilities: ['pull', 'resolve'], dial_timeout: `${init.dialTimeoutMs}ms` },
  }
  for (const [name, value] of Object.entries(prevHosts)) if (name !== init.mirrorUrl) hosts[name] = value
  const doc: Record<string, unknown> = {}
  const server = typeof previous.server === 'string' ? previous.server : init.server
  if (server !== undefined) doc.server = server
  if (init.ca !== undefined) doc.ca = init.ca
  if (init.skipVerify === true) doc.skip_verify = true
  for (const [key, value] of Object.entries(previous))
    if (key !== 'server' && key !== 'host') doc[key] = value
  doc.host = hosts
  return `${MANAGED_MARKER}\n${stringify(doc)}\n`
}

export function isManaged(text: string): boolean {
  return text.startsWith(MANAGED_MARKER)
}
