import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { freePort } from './ports.js'
import { type ManagedProcess, run, startProcess, waitFor } from './process.js'
import { tempDir } from './tmp.js'

export interface RegistryHandle {
  /** `127.0.0.1:PORT`, as used in image references and `?ns=`. */
  host: string
  url: string
  storageDir: string
  /** Starts it again on the same port and storage (after `stop()` simulated an outage). */
  start(): Promise<void>
  /** Stops the process; storage stays. */
  stop(): Promise<void>
  /** Stops and removes everything. */
  destroy(): Promise<void>
}

export interface StartRegistryInit {
  /** Token auth (`auth: token`): the registry checks JWTs signed by a key whose cert is in rootCertBundle. */
  tokenAuth?: { realm: string; service: string; issuer: string; rootCertBundle: string }
  /** Serve HTTPS with this certificate and key (PEM files). */
  tls?: { certificate: string; key: string }
}

/** Debian's `docker-registry` (CNCF distribution 2.8) on a free 127.0.0.1 port with its own storage. */
export async function startRegistry(init: StartRegistryInit = {}): Promise<RegistryHandle> {
  const dir = await tempDir('registry')
  const port = await freePort()
  const host = `127.0.0.1:${port}`
  const storageDir = join(dir.path, 'storage')
  const configPath = join(dir.path, 'config.yml')
  await writeFile(
    configPath,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${storageDir}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: ${host}`,
      ...(init.tls !== undefined
        ? ['  tls:', `    certificate: ${init.tls.certificate}`, `    key: ${init.tls.key}`]
        : []),
      ...(init.tokenAuth !== undefined
        ? [
            'auth:',
            '  token:',
            `    realm: ${init.tokenAuth.realm}`,
            `    service: ${init.tokenAuth.service}`,
            `    issuer: ${init.tokenAuth.issuer}`,
            `    rootcertbundle: ${init.tokenAuth.rootCertBundle}`,
          ]
        : []),
      '',
    ].join('\n'),
  )
  let proc: ManagedProcess | undefined
  const handle: RegistryHandle = {
    host,
    url: `${init.tls !== undefined ? 'https' : 'http'}://${host}`,
    storageDir,
    async start() {
      proc = startProcess({
        command: 'docker-registry',
        args: ['serve', configPath],
        logPath: join(dir.path, 'registry.log'),
      })
      const p = proc
      await waitFor(
        async () => {
          if (p.child.exitCode !== null) throw new Error(`docker-registry exited: ${await p.tail()}`)
          if (init.tls !== undefined) {
            // fetch cannot take a CA; any TLS answer on /v2/ shows the registry is up
            const out = await run('curl', [
              '-sk',
              '-o',
              '/dev/null',
              '-w',
              '%{http_code}',
              `https://${host}/v2/`,
            ])
            return out.trim() === '200'
          }
          // 401 is up too: a registry with token auth challenges /v2/
          const status = (await fetch(`http://${host}/v2/`, { signal: AbortSignal.timeout(1000) })).status
          return status === 200 || status === 401
        },
        { timeoutMs: 15_000, what: `docker-registry on ${host}`, describe: () => p.tail() },
      )
    },
    async stop() {
      await proc?.stop()
      proc = undefined
    },
    async destroy() {
      await handle.stop()
      await dir.remove()
    },
  }
  try {
    await handle.start()
  } catch (err) {
    await handle.destroy()
    throw err
  }
  return handle
}
