import type { Readable } from 'node:stream'
import type { FastifyReply } from 'fastify'
import { BufferPool } from '../buffer-pool.js'

/**
 * Writes a blob stream to the response and hands each chunk back to its pool once the socket has written
 * it (buffer-pool.ts). Why not `reply.send(stream)`: fastify pipes, and a pipe never tells when a chunk is
 * written, so every chunk had to be a fresh allocation — the garbage collector then cost more than the
 * copy itself on this path.
 *
 * The first chunk is awaited before the reply is hijacked: a stream that fails before its first byte (file
 * removed, no peer body) still becomes an OCI error status through the error handler. After that, a
 * failure can only cut the body short (containerd then retries with Range), as fastify itself does.
 * fastify's onResponse hooks still run on the response's `finish`.
 */
export function sendBlob(
  reply: FastifyReply,
  status: number,
  headers: Record<string, string>,
  body: Readable,
): Promise<void> {
  const res = reply.raw
  return new Promise<void>((resolve, reject) => {
    let started = false
    let settled = false
    const start = (): void => {
      started = true
      reply.hijack()
      res.writeHead(status, headers)
      res.on('drain', onDrain)
      res.once('close', onResponseClose)
    }
    const recycle =
      (chunk: Buffer) =>
      (err?: Error | null): void => {
        if (err === undefined || err === null) BufferPool.recycle(chunk)
      }
    const onData = (chunk: Buffer): void => {
      if (!started) start()
      if (!res.write(chunk, recycle(chunk))) body.pause()
    }
    const onDrain = (): void => {
      body.resume()
    }
    const onEnd = (): void => {
      if (!started) start()
      res.end()
      settle()
    }
    const onError = (err: Error): void => {
      if (settled) return
      if (started) {
        reply.log.warn({ err: err.message }, 'blob body failed after the headers; cutting the response short')
        res.destroy()
      }
      settle(err)
    }
    const onClose = (): void => {
      if (body.readableEnded || settled) return
      const err = new Error('blob body closed before its end')
      err.name = 'AbortError'
      onError(err)
    }
    const onResponseClose = (): void => {
      // the client went away (or the body failed): stop the source too
      if (!res.writableFinished) body.destroy()
      settle()
    }
    const settle = (err?: Error): void => {
      if (settled) return
      settled = true
      body.off('data', onData)
      body.off('end', onEnd)
      body.off('close', onClose)
      res.off('drain', onDrain)
      res.off('close', onResponseClose)
      // before any byte went out, the error handler can still answer with a status
      if (err !== undefined && !started) reject(err)
      else resolve()
    }
    // stays attached: a late error must never be an unhandled 'error' event
    body.on('error', onError)
    body.on('data', onData)
    body.on('end', onEnd)
    body.on('close', onClose)
  })
}
