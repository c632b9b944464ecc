import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'

/**
 * Loads the node's libp2p key from `stateDir/identity.key`, creating it on first start, so the peer id
 * (and the DHT records that name it) survives restarts.
 */
export async function loadOrCreateIdentity(stateDir: string): Promise<PrivateKey> {
  const path = join(stateDir, 'identity.key')
  try {
    return privateKeyFromProtobuf(await readFile(path))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new Error(`cannot load the libp2p identity from ${path}: ${(err as Error).message}`)
    }
  }
  const key = await generateKeyPair('Ed25519')
  await mkdir(stateDir, { recursive: true, mode: 0o700 })
  const tmp = `${path}.tmp-${process.pid}`
  await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600 })
  await rename(tmp, path)
  return key
}
