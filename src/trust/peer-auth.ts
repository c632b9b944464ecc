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

export class PeerAuth {
  private readonly maxSkewMs: number

  constructor(
    private readonly components: PeerAuthComponents,
    init: PeerAuthInit = {},
  ) {
    this.maxSkewMs = init.maxSkewMs ?? 60_000
  }

  /** The Authorization header for a request to `audience` (the serving node's peer id). */
  async sign(method: string, path: string, audience: string): Promise<string> {
    const ts = Date.now()
    const sig = await this.components.privateKey.sign(payload(method, path, ts, audience))
    return `${AUTH_SCHEME} id=${this.components.self},ts=${ts},sig=${Buffer.from(sig).toString('base64url')}`
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
    try {
      const key = peerIdFromString(id).publicKey
      if (key === undefined) return undefined
      const ok = await key.verify(
        payload(method, path, ts, this.components.self),
        Buffer.from(sigText, 'base64url'),
      )
      return ok ? id : undefined
    } catch {
      return undefined
    }
  }
}
