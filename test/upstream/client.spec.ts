import { createHash } from 'node:crypto'
import { createServer as createHttpServer, type Server } from 'node:http'
import { createServer as createTcpServer, type Socket } from 'node:net'
import { join } from 'node:path'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { UpstreamClient } from '../../src/upstream/client.js'
import { Endpoints } from '../../src/upstream/endpoints.js'
import {
  type BuiltImage,
  buildImage,
  pushImage,
  type RegistryHandle,
  selfSignedCert,
  startRegistry,
  startTokenServer,
  tempDir,
  type TokenServerHandle,
} from '../harness/index.js'

const USER = 'alice'
const PASSWORD = 'not-a-real-secret'

/** A client on a clock the test moves, so token expiry and back-off are tested without waiting. */
async function client(
  registries: string[],
  init: { tagTimeoutMs?: number; clock?: { now: number } } = {},
): Promise<UpstreamClient> {
  const clock = init.clock ?? { now: 0 }
  return new UpstreamClient(
    {
      endpoints: await Endpoints.load(registries),
      logger: pino({ level: 'silent' }),
      metrics: new Registry(),
      now: () => clock.now,
    },
    { tagTimeoutMs: init.tagTimeoutMs ?? 5000, backoffMs: 5000 },
  )
}

async function listen(server: Server | ReturnType<typeof createTcpServer>): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return `127.0.0.1:${(server.address() as { port: number }).port}`
}

describe('upstream client: token auth against a real token-auth docker-registry', () => {
  let tmp: { path: string; remove(): Promise<void> }
  let tokens: TokenServerHandle
  let registry: RegistryHandle
  let image: BuiltImage
  const clock = { now: 0 }
  let upstream: UpstreamClient

  beforeAll(async () => {
    tmp = await tempDir('upstream')
    tokens = await startTokenServer({
      dir: tmp.path,
      users: { [USER]: PASSWORD },
      publicRepositories: ['public/app'],
    })
    registry = await startRegistry({
      tokenAuth: {
        realm: tokens.realm,
        service: tokens.service,
        issuer: tokens.issuer,
        rootCertBundle: tokens.certPath,
      },
    })
    image = await buildImage({ dir: join(tmp.path, 'image'), layers: [2000] })
    const creds = `${USER}:${PASSWORD}`
    await pushImage(image.dir, `${registry.host}/public/app:v1`, { creds })
    await pushImage(image.dir, `${registry.host}/private/app:v1`, { creds })
    upstream = await client([registry.url], { clock })
  }, 120_000)

  afterAll(async () => {
    upstream?.close()
    await registry?.destroy()
    await tokens?.close()
    await tmp?.remove()
  })

  const q = (repository: string, tag = 'v1'): { registry: string; repository: string; tag: string } => ({
    registry: registry.host,
    repository,
    tag,
  })

  it('a public tag resolves anonymously; the token is fetched once and reused until it expires', async () => {
    const before = tokens.requests.anonymous
    expect(await upstream.resolveTag(q('public/app'))).toMatchObject({
      kind: 'found',
      digest: image.root.digest,
    })
    expect(tokens.requests.anonymous).toBe(before + 1)
    expect(await upstream.resolveTag(q('public/app'))).toMatchObject({ digest: image.root.digest })
    expect(tokens.requests.anonymous).toBe(before + 1) // cached per scope
    clock.now += 300_000 // the token server's expires_in
    expect(await upstream.resolveTag(q('public/app'))).toMatchObject({ digest: image.root.digest })
    expect(tokens.requests.anonymous).toBe(before + 2)
  })

  it('a tag that does not exist is not-found', async () => {
    expect(await upstream.resolveTag(q('public/app', 'nope'))).toEqual({ kind: 'not-found' })
  })

  it('a private repository is denied anonymously, and resolves with the client’s own Authorization', async () => {
    expect(await upstream.resolveTag(q('private/app'))).toEqual({ kind: 'denied', status: 401 })
    const anonymous = tokens.requests.anonymous
    const own = `Bearer ${tokens.issue(USER, 'private/app', ['pull'])}`
    expect(await upstream.resolveTag({ ...q('private/app'), authorization: own })).toMatchObject({
      kind: 'found',
      digest: image.root.digest,
    })
    expect(tokens.requests.anonymous).toBe(anonymous) // forwarded as is, no anonymous token fetched
    const wrong = `Bearer ${tokens.issue(USER, 'public/app', ['pull'])}`
    expect(await upstream.resolveTag({ ...q('private/app'), authorization: wrong })).toEqual({
      kind: 'denied',
      status: 401,
    })
  })

  it('a blob streams anonymously from a public repository, is denied in a private one, and streams with the client’s Authorization', async () => {
    const layer = image.manifests[0]!.layers[0]!
    const blob = (repository: string, authorization?: string) =>
      upstream.openBlob({
        registry: registry.host,
        repository,
        digest: layer.digest,
        authorization,
        headersTimeoutMs: 5000,
        bodyIdleTimeoutMs: 5000,
      })
    const read = async (answer: Awaited<ReturnType<typeof blob>>): Promise<string> => {
      if (answer.kind !== 'found') throw new Error(`not found: ${answer.kind}`)
      const chunks: Buffer[] = []
      for await (const c of answer.body) chunks.push(c as Buffer)
      const bytes = Buffer.concat(chunks)
      expect(bytes.length).toBe(answer.sizeBytes)
      return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
    }
    expect(await read(await blob('public/app'))).toBe(layer.digest)
    expect(await blob('private/app')).toEqual({ kind: 'denied', status: 401 })
    const own = `Bearer ${tokens.issue(USER, 'private/app', ['pull'])}`
    expect(await read(await blob('private/app', own))).toBe(layer.digest)
    // a blob's refusal never puts the registry in back-off for tags
    expect(await upstream.resolveTag(q('public/app'))).toMatchObject({ kind: 'found' })
  })

  it('registry down: unreachable, then back-off without a network call; back after the back-off', async () => {
    await registry.stop()
    try {
      expect(await upstream.resolveTag(q('public/app'))).toMatchObject({
        kind: 'unavailable',
        reason: 'unreachable',
      })
      expect(await upstream.resolveTag(q('public/app'))).toMatchObject({
        kind: 'unavailable',
        reason: 'backoff',
      })
    } finally {
      await registry.start()
    }
    expect(await upstream.resolveTag(q('public/app'))).toMatchObject({ reason: 'backoff' })
    clock.now += 5000
    expect(await upstream.resolveTag(q('public/app'))).toMatchObject({ kind: 'found' })
    // a success cleared the back-off: the next lookup asks again at once
    expect(await upstream.resolveTag(q('public/app'))).toMatchObject({ kind: 'found' })
  })
})

describe('upstream client: failures become reasons, never hangs', () => {
  const sockets = new Set<Socket>()
  const stall = createTcpServer((s) => {
    sockets.add(s) // accepts and never answers
    s.on('close', () => sockets.delete(s))
  })
  let status = 503
  const answering = createHttpServer((_req, res) => res.writeHead(status).end())
  let stallHost: string
  let answeringHost: string
  beforeAll(async () => {
    stallHost = await listen(stall)
    answeringHost = await listen(answering)
  })
  afterAll(async () => {
    for (const s of sockets) s.destroy()
    answering.closeAllConnections()
    await new Promise((r) => stall.close(r))
    await new Promise((r) => answering.close(r))
  })

  it('a registry that accepts and never answers is a timeout within the budget', async () => {
    const c = await client([`http://${stallHost}`], { tagTimeoutMs: 200 })
    expect(await c.resolveTag({ registry: stallHost, repository: 'a/b', tag: 'v1' })).toMatchObject({
      kind: 'unavailable',
      reason: 'timeout',
    })
    c.close()
  })

  it.each([
    [503, 'server-error'],
    [500, 'server-error'],
    [429, 'rate-limited'],
    [302, 'bad-response'],
  ])('status %i is unavailable (%s)', async (code, reason) => {
    status = code
    const c = await client([`http://${answeringHost}`])
    expect(await c.resolveTag({ registry: answeringHost, repository: 'a/b', tag: 'v1' })).toMatchObject({
      kind: 'unavailable',
      reason,
    })
    c.close()
  })

  it('401 with a Basic challenge (htpasswd) and no credentials is denied', async () => {
    const basic = createHttpServer((_req, res) =>
      res.writeHead(401, { 'www-authenticate': 'Basic realm="Registry Realm"' }).end(),
    )
    const host = await listen(basic)
    const c = await client([`http://${host}`])
    expect(await c.resolveTag({ registry: host, repository: 'a/b', tag: 'v1' })).toEqual({
      kind: 'denied',
      status: 401,
    })
    c.close()
    basic.closeAllConnections()
    await new Promise((r) => basic.close(r))
  })
})

describe('upstream client: https with the CA or insecure setting of the registry list', () => {
  let tmp: { path: string; remove(): Promise<void> }
  let registry: RegistryHandle
  let image: BuiltImage
  let ca: string

  beforeAll(async () => {
    tmp = await tempDir('upstream-tls')
    const cert = await selfSignedCert(tmp.path)
    ca = cert.certPath
    const key = cert.keyPath
    registry = await startRegistry({ tls: { certificate: ca, key } })
    image = await buildImage({ dir: join(tmp.path, 'image'), layers: [1000] })
    await pushImage(image.dir, `${registry.host}/tls/app:v1`)
  }, 120_000)

  afterAll(async () => {
    await registry?.destroy()
    await tmp?.remove()
  })

  it.each([
    ['?ca=<cert>', (u: string, c: string) => `${u}?ca=${c}`, 'found'],
    ['?insecure=true', (u: string) => `${u}?insecure=true`, 'found'],
    ['no TLS setting (untrusted cert)', (u: string) => u, 'unavailable'],
  ])('%s → %s', async (_name, entry, kind) => {
    const c = await client([entry(registry.url, ca)])
    const answer = await c.resolveTag({ registry: registry.host, repository: 'tls/app', tag: 'v1' })
    expect(answer.kind).toBe(kind)
    if (answer.kind === 'found') expect(answer.digest).toBe(image.root.digest)
    c.close()
  })

  it('an unlisted registry is asked over https with the system CAs (here: refused)', async () => {
    const c = await client([])
    const answer = await c.resolveTag({ registry: registry.host, repository: 'tls/app', tag: 'v1' })
    expect(answer).toMatchObject({ kind: 'unavailable', reason: 'unreachable' })
    c.close()
  })
})

// Leak check: every server this file opens (registries, token server, mirrors, stubs) is closed again.
// Counted by listening servers only: keep-alive client pools may hold sockets for a few seconds.
const servers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap').length
let serversBefore = 0
beforeAll(() => {
  serversBefore = servers()
})
afterAll(async () => {
  const deadline = Date.now() + 5_000
  while (servers() > serversBefore && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  expect(servers()).toBe(serversBefore)
})
