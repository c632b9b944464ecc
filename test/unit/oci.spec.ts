import { describe, expect, it } from 'vitest'
import {
  acceptsMediaType,
  childDescriptors,
  digestOf,
  formatReference,
  isDigest,
  MediaType,
  parseDigest,
  parseDistributionPath,
  parseManifest,
  parseReference,
} from '../../src/oci/index.js'

const HEX = 'a'.repeat(64)

describe('parseDigest', () => {
  it.each([`sha256:${HEX}`, `sha256:${'0123456789abcdef'.repeat(4)}`])('accepts %s', (d) => {
    expect(parseDigest(d)).toBe(d)
  })
  it.each([
    '',
    'sha256:',
    `sha256:${HEX.toUpperCase()}`,
    `sha256:${HEX}a`,
    `sha256:${HEX.slice(1)}`,
    `sha512:${HEX}`,
    `SHA256:${HEX}`,
    ` sha256:${HEX}`,
    `sha256:${HEX}\n`,
    `sha256:../${HEX.slice(3)}`,
  ])('rejects %j with InvalidDigestError', (d) => {
    expect(() => parseDigest(d)).toThrow(expect.objectContaining({ name: 'InvalidDigestError' }))
    expect(isDigest(d)).toBe(false)
  })
  it('digestOf hashes bytes', () => {
    expect(digestOf('')).toBe('sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855')
  })
})

describe('parseReference (Docker normalisation)', () => {
  it.each([
    ['nginx', 'docker.io/library/nginx:latest'],
    ['nginx:1.25', 'docker.io/library/nginx:1.25'],
    ['library/nginx', 'docker.io/library/nginx:latest'],
    ['bitnami/redis:7', 'docker.io/bitnami/redis:7'],
    ['docker.io/nginx', 'docker.io/library/nginx:latest'],
    ['registry-1.docker.io/library/nginx:1', 'docker.io/library/nginx:1'],
    ['index.docker.io/foo/bar', 'docker.io/foo/bar:latest'],
    ['ghcr.io/org/team/app:v1.2.3', 'ghcr.io/org/team/app:v1.2.3'],
    ['127.0.0.1:5000/repo:tag', '127.0.0.1:5000/repo:tag'],
    ['localhost/app', 'localhost/app:latest'],
    [`quay.io/a/b@sha256:${HEX}`, `quay.io/a/b@sha256:${HEX}`],
    [`quay.io/a/b:t@sha256:${HEX}`, `quay.io/a/b:t@sha256:${HEX}`],
  ])('%s → %s', (input, want) => {
    expect(formatReference(parseReference(input))).toBe(want)
  })
  it.each([
    '',
    'UPPER/case',
    'a//b',
    'repo:',
    'repo:-bad',
    `repo@sha256:${HEX.slice(2)}`,
    'a/b:c:d',
    'x'.repeat(2000),
  ])('rejects %j', (input) => {
    expect(() => parseReference(input)).toThrow(
      expect.objectContaining({ name: expect.stringMatching(/^Invalid/) }),
    )
  })
})

describe('parseDistributionPath', () => {
  it.each([
    ['/v2/', undefined, { kind: 'base' }],
    ['/v2', undefined, { kind: 'base' }],
    [
      '/v2/library/nginx/manifests/latest',
      'docker.io',
      { kind: 'manifest', registry: 'docker.io', repository: 'library/nginx', reference: { tag: 'latest' } },
    ],
    [
      `/v2/a/b/c/manifests/sha256:${HEX}`,
      '127.0.0.1:5000',
      {
        kind: 'manifest',
        registry: '127.0.0.1:5000',
        repository: 'a/b/c',
        reference: { digest: `sha256:${HEX}` },
      },
    ],
    [
      `/v2/repo/blobs/sha256:${HEX}?ns=x`,
      undefined,
      { kind: 'blob', registry: 'docker.io', repository: 'repo', reference: { digest: `sha256:${HEX}` } },
    ],
    [
      '/v2/manifests/manifests/v1',
      'registry-1.docker.io',
      { kind: 'manifest', registry: 'docker.io', repository: 'manifests', reference: { tag: 'v1' } },
    ],
  ])('%s ns=%s', (path, ns, want) => {
    expect(parseDistributionPath(path, ns)).toEqual(want)
  })
  it.each([
    ['/v2/../etc/passwd/blobs/x', 'InvalidNameError'],
    ['/v2/repo/blobs/latest', 'InvalidDigestError'],
    ['/v2/repo/blobs/sha256:abc', 'InvalidDigestError'],
    ['/v2/Repo/manifests/latest', 'InvalidNameError'],
    ['/v2/repo/manifests/sha256:zz', 'InvalidDigestError'],
    ['/v2/repo/manifests/-tag', 'InvalidReferenceError'],
    ['/v2/repo/tags/list', 'UnknownRouteError'],
    ['/v3/', 'UnknownRouteError'],
    ['/v2/repo/manifests/', 'UnknownRouteError'],
  ])('%s → %s', (path, name) => {
    expect(() => parseDistributionPath(path)).toThrow(expect.objectContaining({ name }))
  })
  it('rejects a bad ns', () => {
    expect(() => parseDistributionPath('/v2/r/manifests/t', 'evil host/x')).toThrow(
      expect.objectContaining({ name: 'InvalidReferenceError' }),
    )
  })
})

describe('manifests', () => {
  const d = (n: number): string => `sha256:${String(n).repeat(64).slice(0, 64)}`
  it('parses an index and its children', () => {
    const index = {
      schemaVersion: 2,
      mediaType: MediaType.ociIndex,
      manifests: [
        {
          mediaType: MediaType.ociManifest,
          digest: d(1),
          size: 10,
          platform: { os: 'linux', architecture: 'amd64' },
        },
        {
          mediaType: MediaType.ociManifest,
          digest: d(2),
          size: 11,
          platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
        },
      ],
    }
    const parsed = parseManifest(JSON.stringify(index))
    expect(parsed.kind).toBe('index')
    expect(childDescriptors(parsed).map((c) => c.digest)).toEqual([d(1), d(2)])
    expect(childDescriptors(parsed)[1]?.platform).toEqual({
      os: 'linux',
      architecture: 'arm64',
      variant: 'v8',
    })
  })
  it('parses a Docker v2 manifest without relying on the hint', () => {
    const m = {
      schemaVersion: 2,
      mediaType: MediaType.dockerManifest,
      config: { mediaType: MediaType.dockerConfig, digest: d(3), size: 5 },
      layers: [{ mediaType: MediaType.dockerLayerGzip, digest: d(4), size: 6 }],
    }
    const parsed = parseManifest(Buffer.from(JSON.stringify(m)))
    expect(childDescriptors(parsed).map((c) => c.digest)).toEqual([d(3), d(4)])
  })
  it.each([
    ['not json', 'x'],
    ['array', '[]'],
    [
      'bad digest',
      JSON.stringify({
        mediaType: MediaType.ociIndex,
        manifests: [{ mediaType: 'x', digest: 'nope', size: 1 }],
      }),
    ],
    [
      'negative size',
      JSON.stringify({
        mediaType: MediaType.ociIndex,
        manifests: [{ mediaType: 'x', digest: d(1), size: -1 }],
      }),
    ],
    ['unknown type', JSON.stringify({ mediaType: 'text/plain', layers: [] })],
  ])('rejects %s', (_name, text) => {
    expect(() => parseManifest(text)).toThrow(
      expect.objectContaining({ name: expect.stringMatching(/^Invalid/) }),
    )
  })
})

describe('acceptsMediaType', () => {
  it.each([
    [undefined, MediaType.ociIndex, true],
    ['', MediaType.ociIndex, true],
    ['*/*', MediaType.ociIndex, true],
    [`${MediaType.dockerManifest}, ${MediaType.ociManifest};q=0.9`, MediaType.ociManifest, true],
    [`${MediaType.dockerManifest}, ${MediaType.ociManifest}`, MediaType.ociIndex, false],
    ['application/*', MediaType.ociIndex, true],
  ])('Accept %j admits %s: %s', (accept, type, want) => {
    expect(acceptsMediaType(accept, type)).toBe(want)
  })
})
