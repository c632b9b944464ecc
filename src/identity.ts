import { chmod, mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import type { Logger } from 'pino'

/**
 * Loads the node's libp2p key from `stateDir/identity.key`, creating it on first start, so the peer id
 * (and the DHT records that name it) survives restarts. A key file others can read is made private (0600)
 * with a warning: whoever reads it can act as this node.
 */
export async function loadOrCreateIdentity(stateDir: string, log?: Logger): Promise<PrivateKey> {
  const path = join(stateDir, 'identity.key')
  try {
    const key = privateKeyFromProtobuf(await readFile(path))
    const mode = (await stat(path)).mode & 0o777
    if ((mode & 0o077) !== 0) {
      const fixed = await chmod(path, 0o600).then(
        () => true,
        () => false,
      )
      log?.warn(
        { path, mode: `0${mode.toString(8)}` },
        fixed
          ? 'the identity key was readable by others; its mode is now 0600'
          : 'the identity key is readable by others and its mode could not be changed',
      )
    }
    return key
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
