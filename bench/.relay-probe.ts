import '../src/polyfill.js'
import { startMirror, startPeer, seedImage } from '../test/registry/fixtures.js'
import { curl, GiB } from './lib.js'
const size = Number(process.env.SZ ?? 512 * 1024 * 1024)
const peer = await startPeer((s) => seedImage(s, 'docker.io/library/app:v1', size))
const m = await startMirror({ peerHeadersTimeoutMs: 5000, bodyIdleTimeoutMs: 5000 })
await m.provide('p1', peer.url, peer.image)
for (let i = 0; i < 3; i++) {
  const d = await curl(`${peer.url}/v2/library/app/blobs/${peer.image.layerDigest}`)
  const k = await curl(`${m.url}/v2/library/app/blobs/${peer.image.layerDigest}`)
  console.log('direct', (d.bytes / d.seconds / GiB).toFixed(2), 'relay', (k.bytes / k.seconds / GiB).toFixed(2), k.status, k.bytes)
}
await m.close(); await peer.close()
