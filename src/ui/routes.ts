import { randomBytes } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { StatusCollector } from './collect.js'
import { renderLiveDocument, renderPage } from './page.js'

export interface StatusRoutesInit {
  /** Deadline for a status snapshot (containerd's image list) and for a holders lookup. */
  timeoutMs?: number
}

/** 127.0.0.0/8 and ::1, also as IPv4-mapped IPv6. */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false
  const a = address.startsWith('::ffff:') ? address.slice(7) : address
  return a === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a)
}

/**
 * `/status` (JSON), `/status/holders?q=` (JSON) and `/ui` (HTML) on the mirror. The mirror binds 127.0.0.1,
 * and these routes also refuse any other client: they list peers and images, which is for the node's
 * operator (`kubectl port-forward` or `kagami status` on the node), not for the network.
 */
export function registerStatusRoutes(
  app: FastifyInstance,
  collector: StatusCollector,
  init: StatusRoutesInit = {},
): void {
  const timeoutMs = init.timeoutMs ?? 3000
  const localOnly = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (!isLoopback(request.socket?.remoteAddress)) {
      await reply.code(403).type('text/plain').send('the status page answers on localhost only\n')
    }
  }
  const query = (request: FastifyRequest, name: string): string => {
    const v = (request.query as Record<string, unknown>)[name]
    return typeof v === 'string' ? v : ''
  }

  app.get('/status', { onRequest: localOnly }, async () =>
    collector.status({ signal: AbortSignal.timeout(timeoutMs) }),
  )

  app.get('/status/holders', { onRequest: localOnly }, async (request) =>
    collector.holders(query(request, 'q'), { signal: AbortSignal.timeout(timeoutMs) }),
  )

  app.get('/ui', { onRequest: localOnly }, async (request, reply) => {
    const status = await collector.status({ signal: AbortSignal.timeout(timeoutMs) })
    void reply
      .type('text/html; charset=utf-8')
      .header('cache-control', 'no-store')
      .header('x-content-type-options', 'nosniff')
    if (query(request, 'live') === '1')
      return reply.header('content-security-policy', "default-src 'none'").send(renderLiveDocument(status))
    const q = query(request, 'q')
    const holders =
      q === '' ? undefined : await collector.holders(q, { signal: AbortSignal.timeout(timeoutMs) })
    const nonce = randomBytes(16).toString('base64')
    return reply
      .header(
        'content-security-policy',
        `default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-${nonce}'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'`,
      )
      .send(renderPage(status, holders, { nonce }))
  })
}
