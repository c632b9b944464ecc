import '../src/polyfill.js'
import { spawn } from 'node:child_process'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { peerRequest } from '../src/registry/peer-client.js'
import { resumableBody } from '../src/registry/resume.js'
import { VerifyDigest } from '../src/registry/verify.js'
const child = spawn('node', ['--import', 'tsx', 'bench/.peer-proc.ts'], { stdio: ['ignore', 'pipe', 'inherit'] })
const info = await new Promise<{ url: string; digest: any }>((r) => child.stdout.once('data', (d) => r(JSON.parse(String(d)))))
const peer = { id: 'p', url: info.url }
const path = `/v2/library/app/blobs/${info.digest}`
const sink = () => { let n = 0, c = 0; const w = new Writable({ highWaterMark: 4 << 20, write(ch, _e, cb) { n += ch.length; c++; cb() } }); return { w, stats: () => ({ n, c }) } }
for (const mode of ['raw', 'resume', 'verify', 'raw', 'resume', 'verify']) {
  const t = performance.now()
  const res = await peerRequest(peer, { method: 'GET', path, headersTimeoutMs: 5000, bodyIdleTimeoutMs: 5000 })
  const s = sink()
  let src: any = res.body
  if (mode !== 'raw') src = resumableBody({ first: res, start: 0, end: 512 * 1024 * 1024 - 1, reopen: async () => undefined, signal: new AbortController().signal })
  if (mode === 'verify') await pipeline(src, new VerifyDigest(info.digest), s.w)
  else await pipeline(src, s.w)
  const sec = (performance.now() - t) / 1000
  console.log(mode, (s.stats().n / sec / 2 ** 30).toFixed(2), 'GiB/s', 'chunks', s.stats().c, 'avg KiB', (s.stats().n / s.stats().c / 1024).toFixed(0))
}
child.kill()
