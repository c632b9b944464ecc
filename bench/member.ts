import pino from 'pino'
import { KadDhtRouter } from '../src/routing/kad-dht.js'
import { PeerAuth } from '../src/trust/peer-auth.js'
import { loadPsk } from '../src/trust/psk.js'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { type Cluster, type ClusterNode, waitFor } from '../test/harness/index.js'

/**
 * A cluster member in the bench process: a router with the cluster's PSK connected to `target`, so the
 * bench can sign requests to `target`'s peer endpoint the way a mirror does (curl then carries the header).
 */
export async function benchMember(
  cluster: Cluster,
  target: ClusterNode,
): Promise<{ authorization(method: string, path: string): Promise<string>; stop(): Promise<void> }> {
  const privateKey = await generateKeyPair('Ed25519')
  const router = new KadDhtRouter(
    { logger: pino({ level: 'silent' }) },
    {
      listen: ['/ip4/127.0.0.1/tcp/0'],
      peerUrl: 'http://127.0.0.1:9',
      bootstrap: [target.kagami.p2pMultiaddr],
      privateKey,
      psk: cluster.pskFile === '' ? undefined : await loadPsk(cluster.pskFile),
    },
  )
  await router.start()
  const targetId = (await target.kagami.status()).peerId
  await waitFor(async () => router.isConnected(targetId) || undefined, {
    timeoutMs: 20_000,
    what: 'the bench member to connect',
  })
  const auth = new PeerAuth({
    privateKey,
    self: peerIdFromPrivateKey(privateKey).toString(),
    isMember: () => true,
  })
  return {
    authorization: async (method, path) => `Authorization: ${await auth.sign(method, path, targetId)}`,
    stop: () => router.stop(),
  }
}
