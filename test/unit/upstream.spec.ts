import { describe, expect, it } from 'vitest'
import { parseConfig, runSchema } from '../../src/config.js'
import { registryTarget, renderHostsToml } from '../../src/containerd/hosts-toml.js'
import { parseChallenge } from '../../src/upstream/challenge.js'
import { Endpoints, parseRegistryEntry } from '../../src/upstream/endpoints.js'

describe('registry list entries (--registries)', () => {
  it.each([
    [
      'https://docker.io',
      { registry: 'docker.io', baseUrl: 'https://registry-1.docker.io', insecure: false },
    ],
    ['https://index.docker.io/', { registry: 'docker.io', baseUrl: 'https://registry-1.docker.io' }],
    ['https://registry-1.docker.io', { registry: 'docker.io', baseUrl: 'https://registry-1.docker.io' }],
    ['https://GHCR.io', { registry: 'ghcr.io', baseUrl: 'https://ghcr.io' }],
    ['http://127.0.0.1:5000', { registry: '127.0.0.1:5000', baseUrl: 'http://127.0.0.1:5000' }],
    [
      'https://reg.corp:5000?ca=/etc/kagami/ca.pem',
      { registry: 'reg.corp:5000', baseUrl: 'https://reg.corp:5000', caFile: '/etc/kagami/ca.pem' },
    ],
    ['https://reg.corp/?insecure=true', { registry: 'reg.corp', insecure: true }],
  ])('%s', (url, want) => {
    expect(parseRegistryEntry(url)).toMatchObject(want)
  })

  it.each(['ftp://x', 'https://reg.corp?verify=no', 'not a url'])('rejects %s', (url) => {
    expect(() => parseRegistryEntry(url)).toThrow(/registry URL/)
  })

  it('maps what containerd sends in ?ns= to an endpoint; unlisted registries are https', async () => {
    const e = await Endpoints.load(['http://127.0.0.1:5000', 'https://docker.io'])
    expect(e.endpoint('127.0.0.1:5000').baseUrl).toBe('http://127.0.0.1:5000')
    expect(e.endpoint('docker.io').baseUrl).toBe('https://registry-1.docker.io')
    expect(e.endpoint('quay.io').baseUrl).toBe('https://quay.io')
    expect(e.endpoint('127.0.0.1:6000').baseUrl).toBe('https://127.0.0.1:6000')
    e.close()
  })

  it('a CA file that cannot be read fails start-up, naming the entry', async () => {
    await expect(Endpoints.load(['https://reg.corp?ca=/nonexistent/ca.pem'])).rejects.toThrow(
      /CA file of registry https:\/\/reg.corp/,
    )
  })

  it('configure writes the same TLS settings for containerd (a previous file’s own settings win)', () => {
    const t = registryTarget('https://reg.corp:5000?ca=/etc/kagami/ca.pem&insecure=true')
    expect(t).toEqual({
      dir: 'reg.corp:5000',
      server: 'https://reg.corp:5000',
      ca: '/etc/kagami/ca.pem',
      skipVerify: true,
    })
    const text = renderHostsToml({ mirrorUrl: 'http://127.0.0.1:30020', dialTimeoutMs: 200, ...t })
    expect(text).toMatch(
      /^server = "https:\/\/reg.corp:5000"\nca = "\/etc\/kagami\/ca.pem"\nskip_verify = true$/m,
    )
    const kept = renderHostsToml({
      mirrorUrl: 'http://127.0.0.1:30020',
      dialTimeoutMs: 200,
      ...t,
      previous: 'server = "https://reg.corp:5000"\nca = "/etc/containerd/certs.d/reg.corp:5000/ca.crt"\n',
    })
    expect(kept).toContain('ca = "/etc/containerd/certs.d/reg.corp:5000/ca.crt"')
    expect(registryTarget('https://ghcr.io')).toEqual({ dir: 'ghcr.io', server: 'https://ghcr.io' })
  })

  it('config: entries with TLS settings, the tag policy and the budget', () => {
    const c = parseConfig(runSchema, {
      registries: ['https://reg.corp?ca=/etc/ca.pem&insecure=false'],
      resolveTagsFromPeers: 'never',
      upstreamTagTimeout: '800ms',
    })
    expect(c.resolveTagsFromPeers).toBe('never')
    expect(c.upstreamTagTimeout).toBe(800)
    expect(parseConfig(runSchema).resolveTagsFromPeers).toBe('fallback')
    expect(parseConfig(runSchema).upstreamTagTimeout).toBe(1500)
    expect(() => parseConfig(runSchema, { resolveTagsFromPeers: 'sometimes' })).toThrow(
      /--resolve-tags-from-peers/,
    )
    expect(() => parseConfig(runSchema, { registries: ['https://reg.corp?foo=1'] })).toThrow(/--registries/)
  })
})

describe('WWW-Authenticate challenges', () => {
  it.each([
    [
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"',
      {
        scheme: 'bearer',
        params: {
          realm: 'https://auth.docker.io/token',
          service: 'registry.docker.io',
          scope: 'repository:library/nginx:pull',
        },
      },
    ],
    [
      'Bearer realm="http://127.0.0.1:1/token", scope="repository:a/b:pull,push"',
      { scheme: 'bearer', params: { realm: 'http://127.0.0.1:1/token', scope: 'repository:a/b:pull,push' } },
    ],
    ['Basic realm="Registry Realm"', { scheme: 'basic', params: { realm: 'Registry Realm' } }],
    ['bearer realm=unquoted,service=x', { scheme: 'bearer', params: { realm: 'unquoted', service: 'x' } }],
    ['Bearer realm="a \\"quoted\\" realm"', { scheme: 'bearer', params: { realm: 'a "quoted" realm' } }],
  ])('%s', (header, want) => {
    expect(parseChallenge(header)).toEqual(want)
  })

  it.each([undefined, '', '   ', '"garbage'])('%j is no challenge', (header) => {
    expect(parseChallenge(header)).toBeUndefined()
  })
})
