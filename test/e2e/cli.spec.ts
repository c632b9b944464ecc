import { readdir, readFile, mkdir, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type ContainerdHandle,
  freePort,
  kagamiCli,
  kagamiExit,
  startContainerd,
  startKagami,
  tempDir,
} from '../harness/index.js'

describe('kagami CLI', () => {
  let tmp: { path: string; remove(): Promise<void> }
  let containerd: ContainerdHandle
  beforeAll(async () => {
    tmp = await tempDir('cli')
    containerd = await startContainerd({ name: 'cli' })
  })
  afterAll(async () => {
    await containerd?.destroy()
    await tmp?.remove()
  })

  const runArgs = async (overrides: Record<string, string>): Promise<string[]> => {
    const flags: Record<string, string> = {
      '--containerd-address': containerd.address,
      '--containerd-content-dir': containerd.contentDir,
      '--mirror-address': `127.0.0.1:${await freePort()}`,
      '--peer-address': `127.0.0.1:${await freePort()}`,
      '--p2p-address': `/ip4/127.0.0.1/tcp/${await freePort()}`,
      '--state-dir': join(tmp.path, 'state'),
      ...overrides,
    }
    return ['run', ...Object.entries(flags).flat()]
  }

  it('a missing containerd socket: one clear line naming the option, non-zero exit', async () => {
    const r = await kagamiExit(await runArgs({ '--containerd-address': join(tmp.path, 'nope.sock') }))
    expect(r.code).toBe(1)
    const lines = r.stderr.trim().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/^kagami: error: cannot reach containerd at --containerd-address .*nope\.sock/)
  })

  it('a port in use: names the option and the address', async () => {
    const busy = createServer()
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve))
    const port = (busy.address() as { port: number }).port
    try {
      const r = await kagamiExit(await runArgs({ '--mirror-address': `127.0.0.1:${port}` }))
      expect(r.code).toBe(1)
      expect(r.stderr.trim()).toBe(
        `kagami: error: cannot listen on --mirror-address 127.0.0.1:${port}: address already in use`,
      )
    } finally {
      busy.close()
    }
  })

  it('a malformed multiaddr or duration: exit 2, the option named, nothing started', async () => {
    const r = await kagamiExit(await runArgs({ '--p2p-address': '/ip4/not-an-ip/tcp/1' }))
    expect(r.code).toBe(2)
    expect(r.stderr.trim()).toMatch(/^kagami: invalid --p2p-address \(KAGAMI_P2P_ADDRESS\): a multiaddr/)
    const d = await kagamiExit(await runArgs({ '--resolve-timeout': 'soon' }))
    expect(d.code).toBe(2)
    expect(d.stderr).toMatch(/--resolve-timeout/)
  })

  it('an unknown flag is a usage error', async () => {
    const r = await kagamiExit(['run', '--no-such-flag'])
    expect(r.code).not.toBe(0)
    expect(r.stderr).toMatch(/unknown option '--no-such-flag'/)
  })

  it('configure then cleanup through the CLI restores a pre-existing hosts.toml byte-identically', async () => {
    const dir = join(tmp.path, 'certs.d')
    const original =
      'server = "https://registry.example"\n\n[host."https://cache.example"]\n  capabilities = ["pull"]\n'
    await mkdir(join(dir, 'registry.example'), { recursive: true })
    await writeFile(join(dir, 'registry.example', 'hosts.toml'), original)
    const out = await kagamiCli([
      'configure',
      '--config-path',
      dir,
      '--mirror-url',
      'http://127.0.0.1:30020',
      '--registries',
      'https://registry.example',
      'https://docker.io',
    ])
    expect(out).toMatch(/backed up .*registry\.example\/hosts\.toml/)
    expect(await readFile(join(dir, 'docker.io', 'hosts.toml'), 'utf8')).toMatch(
      /server = "https:\/\/registry-1\.docker\.io"/,
    )
    await kagamiCli([
      'configure',
      '--config-path',
      dir,
      '--mirror-url',
      'http://127.0.0.1:30020',
      '--registries',
      'https://registry.example',
    ])
    await kagamiCli(['cleanup', '--config-path', dir])
    expect(await readFile(join(dir, 'registry.example', 'hosts.toml'), 'utf8')).toBe(original)
    expect((await readdir(dir)).sort()).toEqual(['registry.example'])
  })

  it('run re-executes itself once, same process, with the malloc setting that keeps an idle daemon small', async () => {
    const env = { ...process.env }
    delete env.MALLOC_MMAP_THRESHOLD_
    const k = await startKagami({ name: 'cli-exec', containerd, env })
    try {
      const pid = k.process.child.pid as number
      expect((await k.status()).peerId).not.toBe('') // it serves: the re-executed process is the daemon
      const environ = (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0')
      expect(environ).toContain('MALLOC_MMAP_THRESHOLD_=32768')
    } finally {
      await k.destroy()
    }
  })

  it('status against a mirror that is not running names the address', async () => {
    const port = await freePort()
    const r = await kagamiExit(['status', '--mirror-address', `127.0.0.1:${port}`])
    expect(r.code).toBe(1)
    expect(r.stderr.trim()).toMatch(
      new RegExp(`^kagami: error: cannot reach kagami at http://127.0.0.1:${port}/status`),
    )
  })
})
