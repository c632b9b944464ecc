#!/usr/bin/env -S node --max-semi-space-size=1
// A 1 MiB young generation: the daemon's garbage is small and short-lived, and Node's default (16 MiB
// semi-spaces) kept ~30 MiB more RSS on an idle node (bench/memory.ts; ~50 MiB on Node 24). It used to cost
// blob throughput (a new buffer per chunk meant a scavenge every chunk: 25 % of the peer endpoint's CPU was
// GC); blob chunks now come from reused pool buffers (src/buffer-pool.ts), so the GC share is ~2 % with it.
// In the container image (no src/), runs the build: the minified bundle (dist/kagami.mjs, scripts/bundle.mjs;
// it idles in less memory), else the compiled files (dist/main.js). In a checkout, runs the TypeScript source
// through tsx, so it is never stale; KAGAMI_FROM_DIST=1 runs the build (`npm run build`) instead. Either
// way, `kagami run` executes this file once more for the daemon (src/exec-daemon.ts).
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const MIN_NODE_MAJOR = 24
const bundle = new URL('../dist/kagami.mjs', import.meta.url)
const dist = existsSync(bundle) ? bundle : new URL('../dist/main.js', import.meta.url)
const source = new URL('../src/main.ts', import.meta.url)
// `npm ci` installs Node 24 as a dev dependency (the `node` package): a checkout run from a shell whose
// `node` is older (Debian 12 ships 18, many machines still have 20) re-runs itself on that one. The image
// and `npm run …`/`npx` (node_modules/.bin first on PATH) already start on Node 24.
const pinned = fileURLToPath(new URL('../node_modules/.bin/node', import.meta.url))
if (Number(process.versions.node.split('.')[0]) < MIN_NODE_MAJOR) {
  if (!existsSync(pinned)) {
    process.stderr.write(
      `kagami: needs Node.js >= ${MIN_NODE_MAJOR} (this is ${process.version}); run npm ci, or use the container image\n`,
    )
    process.exit(1)
  }
  const child = spawn(
    pinned,
    [...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)],
    { stdio: 'inherit' },
  )
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, () => child.kill(signal))
  child.on('exit', (code, signal) => process.exit(code ?? (signal === null ? 1 : 128)))
} else if (existsSync(dist) && (!existsSync(source) || process.env.KAGAMI_FROM_DIST === '1')) {
  await import(dist.href)
} else {
  const { register } = await import('tsx/esm/api')
  register()
  await import(source.href)
}
