import { describe, expect, it } from 'vitest'
import { configureSchema, fields, fromEnv, parseConfig, runSchema } from '../../src/config.js'

describe('config schema', () => {
  it('derives flags and env names from field names', () => {
    const f = fields(runSchema).find((x) => x.key === 'resolveTimeout')
    expect(f).toMatchObject({
      flag: '--resolve-timeout',
      env: 'KAGAMI_RESOLVE_TIMEOUT',
      kind: 'string',
      defaultValue: '20ms',
    })
    expect(fields(runSchema).find((x) => x.key === 'bootstrap')?.kind).toBe('array')
    expect(fields(configureSchema).find((x) => x.key === 'allRegistries')?.kind).toBe('boolean')
  })

  it('applies defaults and parses durations to milliseconds', () => {
    const c = parseConfig(runSchema)
    expect(c.resolveTimeout).toBe(20)
    expect(c.peerHeadersTimeout).toBe(1000)
    expect(c.reprovideInterval).toBe(15 * 60_000)
    expect(c.mirrorAddress).toBe('127.0.0.1:29020')
    expect(Object.isFrozen(c)).toBe(true)
  })

  it('parses sizes to bytes (the striping threshold)', () => {
    expect(parseConfig(runSchema).stripeThreshold).toBe(64 * 1024 * 1024)
    expect(parseConfig(runSchema, { stripeThreshold: '1GiB' }).stripeThreshold).toBe(1024 ** 3)
    expect(parseConfig(runSchema, { stripeThreshold: '512KiB' }).stripeThreshold).toBe(512 * 1024)
    expect(parseConfig(runSchema, { stripeThreshold: '0' }).stripeThreshold).toBe(0)
    expect(parseConfig(runSchema, { stripeThreshold: 1000 }).stripeThreshold).toBe(1000)
    expect(() => parseConfig(runSchema, { stripeThreshold: '64MB' })).toThrow(/--stripe-threshold/)
  })

  it('layers defaults < file < env < flags', () => {
    const file = { resolveTimeout: '30ms', logLevel: 'debug', stateDir: '/file' }
    const env = fromEnv(runSchema, {
      KAGAMI_RESOLVE_TIMEOUT: '40ms',
      KAGAMI_BOOTSTRAP: 'dns:a.b:1, /ip4/1.2.3.4/tcp/5',
    })
    const flags = { resolveTimeout: '50ms', stateDir: undefined }
    const c = parseConfig(runSchema, file, env, flags)
    expect(c.resolveTimeout).toBe(50)
    expect(c.logLevel).toBe('debug')
    expect(c.stateDir).toBe('/file')
    expect(c.bootstrap).toEqual(['dns:a.b:1', '/ip4/1.2.3.4/tcp/5'])
  })

  it.each([
    [{ resolveTimeout: '20 parsecs' }, /--resolve-timeout \(KAGAMI_RESOLVE_TIMEOUT\)/],
    [{ mirrorAddress: 'localhost' }, /--mirror-address/],
    [{ mirrorAddress: '127.0.0.1:70000' }, /port must be/],
    [{ p2pAddress: '/ip4/not-an-ip/tcp/1' }, /--p2p-address/],
    [{ bootstrap: ['dns:missing-port'] }, /--bootstrap/],
    [{ bootstrap: ['dns:kagami.svc:99999'] }, /--bootstrap.*port from 1 to 65535/],
    [{ bootstrap: ['dns:kagami.svc:0'] }, /--bootstrap/],
    [{ bootstrap: ['/ip4/1.2.3.4/tcp/99999'] }, /--bootstrap/],
    [{ registries: ['ftp://x'] }, /--registries/],
    [{ logLevel: 'loud' }, /--log-level/],
    [{ noSuchSetting: 1 }, /noSuchSetting/],
  ])('names the bad option: %j', (input, message) => {
    expect(() => parseConfig(runSchema, input)).toThrow(message)
  })
})
