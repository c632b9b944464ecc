/**
 * The registry servers hand fastify schema compilers that load Ajv and fast-json-stringify only when a route
 * has a schema (src/registry/server.ts, to keep them out of an idle daemon). A route with one still
 * validates its input and serializes its output as fastify's own compilers do.
 */
import fastify from 'fastify'
import { describe, expect, it } from 'vitest'
import { lazySchemaCompilers } from '../../src/registry/server.js'

describe('lazy schema compilers', () => {
  it('validate a querystring and serialize a response like fastify’s defaults', async () => {
    const app = fastify({ schemaController: { compilersFactory: lazySchemaCompilers as never } })
    app.get(
      '/n',
      {
        schema: {
          querystring: {
            type: 'object',
            properties: { n: { type: 'integer', minimum: 1 } },
            required: ['n'],
          },
          response: { 200: { type: 'object', properties: { twice: { type: 'integer' } } } },
        },
      },
      async (req) => ({ twice: (req.query as { n: number }).n * 2, dropped: 'not in the schema' }),
    )
    try {
      const ok = await app.inject({ url: '/n?n=21' })
      expect(ok.statusCode).toBe(200)
      expect(ok.body).toBe('{"twice":42}')
      const bad = await app.inject({ url: '/n?n=zero' })
      expect(bad.statusCode).toBe(400)
      expect(bad.json()).toMatchObject({ code: 'FST_ERR_VALIDATION' })
    } finally {
      await app.close()
    }
  })
})
