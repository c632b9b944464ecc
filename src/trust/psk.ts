import { randomBytes } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'

const SWARM_KEY_HEADER = '/key/swarm/psk/1.0.0/\n/base16/\n'

/**
 * Loads the cluster's private-network key: libp2p's swarm.key format, or just its 64 hex characters (what a
 * Kubernetes Secret made with `kagami psk` or `openssl rand -hex 32` holds). Returns the swarm.key bytes
 * @libp2p/pnet expects. Errors name the file and the problem, never the key.
 */
export async function loadPsk(path: string): Promise<Uint8Array> {
  let text: string
  try {
    if ((await stat(path)).size > 4096) throw new Error('the file is larger than a key')
    text = (await readFile(path, 'utf8')).trim()
  } catch (err) {
    throw new Error(`cannot read --psk-file ${path}: ${(err as Error).message}`)
  }
  const hex = text.startsWith('/key/swarm/psk/1.0.0/')
    ? /^\/key\/swarm\/psk\/1\.0\.0\/\s*\/base16\/\s*([0-9a-fA-F]+)$/.exec(text)?.[1]
    : text
  if (hex === undefined || !/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new Error(
      `--psk-file ${path} holds no key: expected 64 hex characters (32 bytes) or a libp2p swarm.key`,
    )
  }
  return new TextEncoder().encode(`${SWARM_KEY_HEADER}${hex.toLowerCase()}`)
}

/** A new random key as 64 hex characters (`kagami psk`). */
export function generatePsk(): string {
  return randomBytes(32).toString('hex')
}
