import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type ContainerdHandle, startContainerd } from './containerd.js'
import { kagamiCli, type KagamiHandle, startKagami } from './kagami.js'
import { freePort } from './ports.js'
import { waitFor } from './process.js'
import { tempDir } from './tmp.js'

export interface ClusterNode {
  name: string
  containerd: ContainerdHandle
  kagami: KagamiHandle
  /** containerd hosts dir written by `kagami configure` (mirror first), for `ctr pull --hosts-dir`. */
  hostsDir: string
}

export interface Cluster {
  nodes: ClusterNode[]
  /** The private-network key file ('' for an open network). */
  pskFile: string
  destroy(): Promise<void>
}

export interface StartClusterInit {
  names: string[]
  /**
   * Registry URLs `kagami configure` writes hosts.toml for (upstream as `server`), also passed to
   * `kagami run --registries` as the chart does (scheme and TLS for asking upstream about tags).
   */
  registries: string[]
  logLevel?: string
  env?: NodeJS.ProcessEnv
  /** Extra environment of one node (on top of `env`), e.g. to compare two settings side by side in a bench. */
  envFor?: (name: string) => NodeJS.ProcessEnv
  /** Wait until each node sees this many peers (default: all others). */
  minPeers?: number
  /** Private-network key file shared by the nodes, as the chart's Secret is (default: a new key; '' = open). */
  pskFile?: string
  extraArgs?: (name: string) => string[]
}

/**
 * N nodes, each a private containerd plus a `kagami run` process, listing each other as bootstrap peers the
 * way the chart's headless-Service DNS name does, with hosts.toml written by `kagami configure`.
 */
export async function startCluster(init: StartClusterInit): Promise<Cluster> {
  const dir = await tempDir('cluster')
  const nodes: ClusterNode[] = []
  let pskFile = init.pskFile
  const destroy = async (): Promise<void> => {
    for (const n of nodes.reverse()) {
      await n.kagami?.destroy().catch(() => undefined) // undefined when its start failed
      await n.containerd.destroy().catch(() => undefined)
    }
    await dir.remove()
  }
  try {
    if (pskFile === undefined) {
      pskFile = join(dir.path, 'psk')
      await writeFile(pskFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 })
    }
    const ports = await Promise.all(init.names.map(() => freePort()))
    const bootstrap = ports.map((p) => `/ip4/127.0.0.1/tcp/${p}`)
    for (const [i, name] of init.names.entries()) {
      const containerd = await startContainerd({ name })
      const node = { name, containerd } as ClusterNode
      nodes.push(node)
      node.kagami = await startKagami({
        name,
        containerd,
        bootstrap,
        p2pPort: ports[i],
        logLevel: init.logLevel,
        env: { ...init.env, ...init.envFor?.(name) },
        extraArgs: [
          ...(pskFile !== '' ? ['--psk-file', pskFile] : []),
          ...init.registries.flatMap((r) => ['--registries', r]),
          ...(init.extraArgs?.(name) ?? []),
        ],
      })
      node.hostsDir = join(dir.path, `certs.d-${name}`)
      await kagamiCli([
        'configure',
        '--config-path',
        node.hostsDir,
        '--mirror-url',
        node.kagami.mirrorUrl,
        '--registries',
        ...init.registries,
      ])
    }
    const want = init.minPeers ?? init.names.length - 1
    for (const n of nodes) {
      await waitFor(async () => (await n.kagami.status()).peers.length >= want, {
        timeoutMs: 60_000,
        what: `${n.name} to see ${want} peers`,
      })
    }
  } catch (err) {
    await destroy()
    throw err
  }
  return { nodes: [...nodes], pskFile: pskFile ?? '', destroy }
}
