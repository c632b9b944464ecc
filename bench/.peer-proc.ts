import '../src/polyfill.js'
import { startPeer, seedImage } from '../test/registry/fixtures.js'
const peer = await startPeer((s) => seedImage(s, 'docker.io/library/app:v1', 512 * 1024 * 1024))
console.log(JSON.stringify({ url: peer.url, digest: peer.image.layerDigest }))
