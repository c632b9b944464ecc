import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { describe, expect, it } from 'vitest'
import { PeerAuth } from '../../src/trust/peer-auth.js'
import { checkPeerUrl } from '../../src/trust/peer-url.js'
import { generatePsk, loadPsk } from '../../src/trust/psk.js'
import { tempDir } from '../harness/index.js'

describe('checkPeerUrl', () => {
  it.each([
    ['http://10.0.0.7:30021', '10.0.0.7', true],
    ['http://10.0.0.7:30021', '10.0.0.8', false], // another host
    ['http://127.0.0.1:30020', '10.0.0.8', false], // our own loopback mirror, from a remote peer
    ['http://169.254.169.254:80', '10.0.0.8', false], // cloud metadata
    ['http://127.0.0.12:30021', '127.0.0.1', true], // loopback peer on this machine
    ['http://[fd00::7]:30021', 'fd00::7', true],
    ['http://[fd00::7]:30021', 'fd00::8', false],
    ['http://10.0.0.7:30021', '::ffff:10.0.0.7', true],
    ['http://node-a:30021', '10.0.0.7', false], // names could resolve anywhere
    ['http://10.0.0.7:30021/x', '10.0.0.7', false],
    ['https://10.0.0.7:30021', '10.0.0.7', false],
    ['http://10.0.0.7:30021', undefined, false],
  ])('%s from %s → %s', (url, ip, ok) => {
    expect(checkPeerUrl(url, ip) !== undefined).toBe(ok)
  })
})

describe('PeerAuth', () => {
  it('accepts a token only from a member, for the path, method and audience it was made for, while fresh', async () => {
    const key = await generateKeyPair('Ed25519')
    const id = peerIdFromPrivateKey(key).toString()
    const serverKey = await generateKeyPair('Ed25519')
    const server = peerIdFromPrivateKey(serverKey).toString()
    const members = new Set([id])
    const client = new PeerAuth({ privateKey: key, self: id, isMember: () => true })
    const verifier = new PeerAuth({ privateKey: serverKey, self: server, isMember: (p) => members.has(p) })
    const token = await client.sign('GET', '/v2/a/blobs/x', server)
    expect(await verifier.verify(token, 'GET', '/v2/a/blobs/x')).toBe(id)
    expect(await verifier.verify(token, 'GET', '/v2/a/blobs/y')).toBeUndefined()
    expect(await verifier.verify(token, 'HEAD', '/v2/a/blobs/x')).toBeUndefined()
    expect(
      await verifier.verify(await client.sign('GET', '/v2/a/blobs/x', id), 'GET', '/v2/a/blobs/x'),
    ).toBeUndefined()
    // one signature character changed (to one it is not)
    const tampered = token.replace(/sig=(.)/, (_m, c: string) => `sig=${c === 'A' ? 'B' : 'A'}`)
    expect(await verifier.verify(tampered, 'GET', '/v2/a/blobs/x')).toBeUndefined()
    expect(await verifier.verify('Bearer x', 'GET', '/v2/a/blobs/x')).toBeUndefined()
    expect(await verifier.verify(undefined, 'GET', '/v2/a/blobs/x')).toBeUndefined()
    const stale = token.replace(/ts=\d+/, `ts=${Date.now() - 120_000}`)
    expect(await verifier.verify(stale, 'GET', '/v2/a/blobs/x')).toBeUndefined()
    members.clear() // disconnected: no longer a member
    expect(await verifier.verify(token, 'GET', '/v2/a/blobs/x')).toBeUndefined()
  })
})

describe('loadPsk', () => {
  it('reads 64 hex characters or a swarm.key, and names the file (never the key) when it is neither', async () => {
    const dir = await tempDir('psk')
    try {
      const hex = generatePsk()
      await writeFile(join(dir.path, 'hex'), `${hex}\n`)
      await writeFile(join(dir.path, 'swarm.key'), `/key/swarm/psk/1.0.0/\n/base16/\n${hex}\n`)
      const a = await loadPsk(join(dir.path, 'hex'))
      expect(Buffer.from(a).toString()).toBe(`/key/swarm/psk/1.0.0/\n/base16/\n${hex}`)
      expect(await loadPsk(join(dir.path, 'swarm.key'))).toEqual(a)
      await writeFile(join(dir.path, 'bad'), 'secret-but-not-hex')
      await expect(loadPsk(join(dir.path, 'bad'))).rejects.toThrow(/--psk-file .*bad holds no key/)
      await expect(loadPsk(join(dir.path, 'bad'))).rejects.not.toThrow(/secret-but-not-hex/)
      await expect(loadPsk(join(dir.path, 'missing'))).rejects.toThrow(/cannot read --psk-file/)
    } finally {
      await dir.remove()
    }
  })
})
