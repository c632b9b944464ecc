import { createPrivateKey, createPublicKey, type KeyObject, sign, verify } from 'node:crypto'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'

/**
 * Peer endpoint authentication: every request a mirror makes to a peer carries
 * `Authorization: KagamiPeer id=<peer id>,ts=<ms>,sig=<base64url>`, an Ed25519 signature with the requesting
 * node's libp2p identity over method, path, time and the serving node's id. The serving node accepts it only
 * when the signer is connected to it right now over libp2p (so a member of the PSK-protected network), the
 * time is within `maxSkewMs`, and the signature verifies against the public key inside the peer id. A token
 * is useless against another node or for another path, and expires within a minute.
 */
export const AUTH_SCHEME = 'KagamiPeer'
const CONTEXT = 'kagami-peer-auth/1'

export interface PeerAuthComponents {
  privateKey: PrivateKey
  /** This node's peer id (the audience of tokens it accepts). */
  self: string
  /** Whether a peer is connected over libp2p now (only members can be, with a PSK). */
  isMember(peerId: string): boolean
}

export interface PeerAuthInit {
  maxSkewMs?: number
}

function payload(method: string, path: string, ts: number, audience: string): Uint8Array {
  return new TextEncoder().encode(`${CONTEXT}\n${method}\n${path}\n${ts}\n${audience}`)
}

// Node's native Ed25519 (OpenSSL) with key objects made once: every peer request signs and verifies, and
// @libp2p/crypto re-imports the key each time. Same keys, same signatures.
const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64url')
const ed25519Public = (raw: Uint8Array): KeyObject =>
  createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64(raw) }, format: 'jwk' })

/** Public keys of recent signers, so a peer id is parsed once, not per request. */
const MAX_CACHED_KEYS = 4096

export class PeerAuth {
  private readonly maxSkewMs: number
  private readonly signingKey: KeyObject | undefined
  private readonly keys = new Map<string, KeyObject | undefined>()

  constructor(
    private readonly components: PeerAuthComponents,
    init: PeerAuthInit = {},
  ) {
    this.maxSkewMs = init.maxSkewMs ?? 60_000
    const key = components.privateKey
    this.signingKey =
      key.type === 'Ed25519'
        ? createPrivateKey({
            key: { kty: 'OKP', crv: 'Ed25519', d: b64(key.raw.subarray(0, 32)), x: b64(key.publicKey.raw) },
            format: 'jwk',
          })
        : undefined
  }

  /** The Authorization header for a request to `audience` (the serving node's peer id). */
  async sign(method: string, path: string, audience: string): Promise<string> {
    const ts = Date.now()
    const data = payload(method, path, ts, audience)
    const sig =
      this.signingKey !== undefined
        ? sign(null, data, this.signingKey)
        : await this.components.privateKey.sign(data)
    return `${AUTH_SCHEME} id=${this.components.self},ts=${ts},sig=${b64(sig)}`
  }

  /** The signer's public key (Ed25519 ids embed it), cached. */
  private publicKey(id: string): KeyObject | undefined {
    if (this.keys.has(id)) return this.keys.get(id)
    let key: KeyObject | undefined
    try {
      const pub = peerIdFromString(id).publicKey
      key = pub?.type === 'Ed25519' ? ed25519Public(pub.raw) : undefined
    } catch {
      key = undefined
    }
    if (this.keys.size >= MAX_CACHED_KEYS) this.keys.delete(this.keys.keys().next().value as string)
    this.keys.set(id, key)
    return key
  }

  /** The verified requesting peer id, or undefined for anything else. Never throws. */
  async verify(header: string | undefined, method: string, path: string): Promise<string | undefined> {
    if (header === undefined || header.length > 512) return undefined
    const m = /^KagamiPeer id=([1-9A-HJ-NP-Za-km-z]{1,128}),ts=(\d{1,15}),sig=([A-Za-z0-9_-]{1,200})$/.exec(
      header,
    )
    if (m === null) return undefined
    const [, id, tsText, sigText] = m as unknown as [string, string, string, string]
    const ts = Number(tsText)
    if (Math.abs(Date.now() - ts) > this.maxSkewMs || !this.components.isMember(id)) return undefined
    const key = this.publicKey(id)
    if (key === undefined) return undefined
    try {
      const data = payload(method, path, ts, this.components.self)
      return verify(null, data, key, Buffer.from(sigText, 'base64url')) ? id : undefined
    } catch {
      return undefined
    }
  }
}
