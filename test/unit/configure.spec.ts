import { mkdtemp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parse } from 'smol-toml'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { cleanup, configure } from '../../src/containerd/configure.js'
import { registryTarget, renderHostsToml } from '../../src/containerd/hosts-toml.js'

describe('registryTarget', () => {
  it.each([
    ['https://docker.io', 'docker.io', 'https://registry-1.docker.io'],
    ['https://registry-1.docker.io/', 'docker.io', 'https://registry-1.docker.io'],
    ['https://ghcr.io', 'ghcr.io', 'https://ghcr.io'],
    ['http://127.0.0.1:5000', '127.0.0.1:5000', 'http://127.0.0.1:5000'],
  ])('%s → dir %s, server %s', (url, dir, server) => {
    expect(registryTarget(url)).toEqual({ dir, server })
  })
})

describe('renderHostsToml', () => {
  it('puts the mirror first with pull+resolve only, upstream as server', () => {
    const doc = parse(
      renderHostsToml({ mirrorUrl: 'http://127.0.0.1:30020', server: 'https://ghcr.io', dialTimeoutMs: 200 }),
    )
    expect(doc.server).toBe('https://ghcr.io')
    expect(doc.host).toEqual({
      'http://127.0.0.1:30020': { capabilities: ['pull', 'resolve'], dial_timeout: '200ms' },
    })
  })
  it('keeps a previous file’s server and hosts after the mirror', () => {
    const previous = 'server = "https://mirror.corp"\n[host."https://cache.corp"]\ncapabilities = ["pull"]\n'
    const doc = parse(
      renderHostsToml({
        mirrorUrl: 'http://127.0.0.1:30020',
        server: 'https://x',
        dialTimeoutMs: 200,
        previous,
      }),
    )
    expect(doc.server).toBe('https://mirror.corp')
    expect(Object.keys(doc.host as object)).toEqual(['http://127.0.0.1:30020', 'https://cache.corp'])
  })
  it('carries every top-level setting of a previous file (TLS and auth for the server)', () => {
    const previous = [
      'server = "https://registry.corp"',
      'ca = "/etc/certs/corp-ca.pem"',
      'client = [["/etc/certs/client.pem", "/etc/certs/client.key"]]',
      'skip_verify = false',
      '[header]',
      '  authorization = "Basic dXNlcjpwYXNz"',
      '[host."https://cache.corp"]',
      '  capabilities = ["pull"]',
      '',
    ].join('\n')
    const doc = parse(
      renderHostsToml({
        mirrorUrl: 'http://127.0.0.1:30020',
        server: 'https://x',
        dialTimeoutMs: 200,
        previous,
      }),
    )
    expect(doc).toMatchObject({
      server: 'https://registry.corp',
      ca: '/etc/certs/corp-ca.pem',
      client: [['/etc/certs/client.pem', '/etc/certs/client.key']],
      skip_verify: false,
      header: { authorization: 'Basic dXNlcjpwYXNz' },
    })
    expect(Object.keys(doc.host as object)).toEqual(['http://127.0.0.1:30020', 'https://cache.corp'])
  })
})

describe('configure / cleanup', () => {
  let dir: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kagami-configure-'))
  })
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('restores a pre-existing hosts.toml byte-identically and removes what it added', async () => {
    const original = Buffer.from(
      '# user file\r\nserver = "http://127.0.0.1:5000"\n\n[host."http://10.1.1.1:5000"]\n  capabilities = ["pull"]\n',
    )
    await mkdir(join(dir, '127.0.0.1:5000'))
    await writeFile(join(dir, '127.0.0.1:5000', 'hosts.toml'), original)
    await mkdir(join(dir, 'unrelated'))
    await writeFile(join(dir, 'unrelated', 'hosts.toml'), 'server = "https://u"\n')
    const init = {
      configPath: dir,
      mirrorUrl: 'http://127.0.0.1:30020',
      registries: ['http://127.0.0.1:5000', 'https://docker.io'],
      allRegistries: true,
      dialTimeoutMs: 200,
    }
    const first = await configure(init)
    expect(first.backedUp).toEqual([join(dir, '127.0.0.1:5000', 'hosts.toml')])
    const written = await readFile(join(dir, '127.0.0.1:5000', 'hosts.toml'), 'utf8')
    // idempotent: a second run writes the same bytes and backs nothing up again
    const second = await configure(init)
    expect(second.backedUp).toEqual([])
    expect(await readFile(join(dir, '127.0.0.1:5000', 'hosts.toml'), 'utf8')).toBe(written)
    expect(Object.keys(parse(written).host as object)[0]).toBe('http://127.0.0.1:30020')

    const result = await cleanup({ configPath: dir })
    expect(result.restored).toEqual([join(dir, '127.0.0.1:5000', 'hosts.toml')])
    expect(Buffer.compare(await readFile(join(dir, '127.0.0.1:5000', 'hosts.toml')), original)).toBe(0)
    expect((await readdir(dir)).sort()).toEqual(['127.0.0.1:5000', 'unrelated'])
    expect(await readdir(join(dir, '127.0.0.1:5000'))).toEqual(['hosts.toml'])
    expect(await readFile(join(dir, 'unrelated', 'hosts.toml'), 'utf8')).toBe('server = "https://u"\n')
  })

  it('a user file written after a first configure becomes the backup, so cleanup restores the newer file', async () => {
    const registryDir = join(dir, '127.0.0.1:5000')
    await mkdir(registryDir)
    await writeFile(join(registryDir, 'hosts.toml'), 'server = "http://127.0.0.1:5000"\n# v1\n')
    const init = {
      configPath: dir,
      mirrorUrl: 'http://127.0.0.1:30020',
      registries: ['http://127.0.0.1:5000'],
      allRegistries: false,
      dialTimeoutMs: 200,
    }
    await configure(init)
    // the user edits hosts.toml while kagami is installed; the next pod start configures again
    const newer = 'server = "http://127.0.0.1:5000"\nca = "/etc/ca.pem"\n# v2\n'
    await writeFile(join(registryDir, 'hosts.toml'), newer)
    expect((await configure(init)).backedUp).toEqual([join(registryDir, 'hosts.toml')])
    expect(parse(await readFile(join(registryDir, 'hosts.toml'), 'utf8')).ca).toBe('/etc/ca.pem')
    await cleanup({ configPath: dir })
    expect(await readFile(join(registryDir, 'hosts.toml'), 'utf8')).toBe(newer)
  })

  it('refuses to configure nothing', async () => {
    await expect(
      configure({
        configPath: dir,
        mirrorUrl: 'http://x:1',
        registries: [],
        allRegistries: false,
        dialTimeoutMs: 1,
      }),
    ).rejects.toThrow(/--registries/)
  })

  it('cleanup of a missing dir is a no-op', async () => {
    expect(await cleanup({ configPath: join(dir, 'nope') })).toEqual({ restored: [], removed: [] })
  })
})
