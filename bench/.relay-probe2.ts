import '../src/polyfill.js'
import { spawn } from 'node:child_process'
import { startMirror, type TestImage } from '../test/registry/fixtures.js'
import { curl, GiB } from './lib.js'
const child = spawn('node', ['--import', 'tsx', 'bench/.peer-proc.ts'], { stdio: ['ignore', 'pipe', 'inherit'] })
const info = await new Promise<{ url: string; digest: any }>((r) => child.stdout.once('data', (d) => r(JSON.parse(String(d)))))
const m = await startMirror({ peerHeadersTimeoutMs: 5000, bodyIdleTimeoutMs: 5000 })
await m.provide('p1', info.url, { name: 'docker.io/library/app:v1', layerDigest: info.digest, manifestDigest: info.digest, configDigest: info.digest } as TestImage)
for (let i = 0; i < 4; i++) {
  const d = await curl(`${info.url}/v2/library/app/blobs/${info.digest}`)
  const k = await curl(`${m.url}/v2/library/app/blobs/${info.digest}`)
  console.log('direct', (d.bytes / d.seconds / GiB).toFixed(2), 'relay', (k.bytes / k.seconds / GiB).toFixed(2), k.status, k.bytes)
}
await m.close(); child.kill()
