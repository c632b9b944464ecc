import { randomUUID, sign } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { selfSignedCert } from './tls.js'

export interface TokenServerHandle {
  /** `http://127.0.0.1:PORT/token`: the registry's `auth.token.realm`. */
  realm: string
  service: string
  issuer: string
  /** The issuer's self-signed certificate: the registry's `rootcertbundle`. */
  certPath: string
  /** Token requests seen, by whether they carried valid credentials. */
  requests: { anonymous: number; authenticated: number }
  /** A token for `user` with `actions` on `repository`, as a client with credentials would get. */
  issue(user: string, repository: string, actions: string[]): string
  close(): Promise<void>
}

export interface StartTokenServerInit {
  /** Where the key and certificate are written. */
  dir: string
  users: Record<string, string>
  /** Repositories anyone may pull; every other repository needs a user. */
  publicRepositories: string[]
  expiresInS?: number
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url')

/**
 * A tiny distribution token server (the protocol Docker Hub's auth.docker.io speaks): GET with optional
 * Basic credentials, or containerd's OAuth POST form, answered with an RS256 JWT carrying the issuer's
 * certificate in `x5c`. The real `docker-registry` verifies those tokens against `rootcertbundle`.
 */
export async function startTokenServer(init: StartTokenServerInit): Promise<TokenServerHandle> {
  const { certPath, keyPath } = await selfSignedCert(init.dir, {
    name: 'token-issuer',
    subject: '/CN=kagami-test-token-issuer',
  })
  const key = await readFile(keyPath, 'utf8')
  const certDer = (await readFile(certPath, 'utf8')).replace(/-----[A-Z ]+-----|\s/g, '')
  const service = 'kagami-test-registry'
  const issuer = 'kagami-test-issuer'
  const expiresInS = init.expiresInS ?? 300
  const requests = { anonymous: 0, authenticated: 0 }

  const issueToken = (sub: string, access: { type: string; name: string; actions: string[] }[]): string => {
    const now = Math.floor(Date.now() / 1000)
    const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'RS256', x5c: [certDer] }))
    const claims = b64url(
      JSON.stringify({
        iss: issuer,
        sub,
        aud: service,
        exp: now + expiresInS,
        nbf: now - 1,
        iat: now,
        jti: randomUUID(),
        access,
      }),
    )
    const signature = sign('sha256', Buffer.from(`${header}.${claims}`), key)
    return `${header}.${claims}.${b64url(signature)}`
  }

  const grant = (
    user: string | undefined,
    scopes: string[],
  ): { type: string; name: string; actions: string[] }[] =>
    scopes.flatMap((scope) => {
      const m = /^repository:([^:]+):(.+)$/.exec(scope)
      if (m === null) return []
      const name = m[1] as string
      const wanted = (m[2] as string).split(',')
      const allowed =
        user !== undefined
          ? wanted
          : init.publicRepositories.includes(name)
            ? wanted.filter((a) => a === 'pull')
            : []
      return [{ type: 'repository', name, actions: allowed }]
    })

  const answer = (res: ServerResponse, user: string | undefined, scopes: string[]): void => {
    const token = issueToken(user ?? '', grant(user, scopes))
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(
      JSON.stringify({
        token,
        access_token: token,
        expires_in: expiresInS,
        issued_at: new Date().toISOString(),
      }),
    )
  }
  const deny = (res: ServerResponse): void => {
    res.writeHead(401, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ details: 'bad credentials' }))
  }
  const checkUser = (user: string, password: string): boolean => init.users[user] === password

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://x')
    if (url.pathname !== '/token') {
      res.writeHead(404).end()
      return
    }
    if (req.method === 'GET') {
      const basic = /^Basic (.+)$/i.exec(req.headers.authorization ?? '')
      let user: string | undefined
      if (basic !== null) {
        const [u, p] = Buffer.from(basic[1] as string, 'base64')
          .toString()
          .split(':') as [string, string]
        if (!checkUser(u, p)) return deny(res)
        user = u
      }
      if (user === undefined) requests.anonymous++
      else requests.authenticated++
      answer(res, user, url.searchParams.getAll('scope'))
      return
    }
    if (req.method === 'POST') {
      // containerd with credentials: the OAuth2 password grant (form body)
      let body = ''
      req.on('data', (c: Buffer) => (body += c.toString()))
      req.on('end', () => {
        const form = new URLSearchParams(body)
        const u = form.get('username') ?? ''
        if (form.get('grant_type') !== 'password' || !checkUser(u, form.get('password') ?? ''))
          return deny(res)
        requests.authenticated++
        answer(
          res,
          u,
          (form.get('scope') ?? '').split(' ').filter((s) => s !== ''),
        )
      })
      return
    }
    res.writeHead(405).end()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  return {
    realm: `http://127.0.0.1:${port}/token`,
    service,
    issuer,
    certPath,
    requests,
    issue: (user, repository, actions) =>
      issueToken(user, [{ type: 'repository', name: repository, actions }]),
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
