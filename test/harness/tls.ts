import { join } from 'node:path'
import { run } from './process.js'

/** A self-signed RSA certificate and key (PEM files in `dir`), valid for 2 days, for 127.0.0.1 by default. */
export async function selfSignedCert(
  dir: string,
  init: { name?: string; subject?: string; ip?: string } = {},
): Promise<{ certPath: string; keyPath: string }> {
  const name = init.name ?? 'tls'
  const certPath = join(dir, `${name}-cert.pem`)
  const keyPath = join(dir, `${name}-key.pem`)
  const ip = init.ip ?? '127.0.0.1'
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    keyPath,
    '-out',
    certPath,
    '-days',
    '2',
    '-subj',
    init.subject ?? `/CN=${ip}`,
    '-addext',
    `subjectAltName=IP:${ip}`,
  ])
  return { certPath, keyPath }
}
