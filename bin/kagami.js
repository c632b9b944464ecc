#!/usr/bin/env -S node --max-semi-space-size=1
// A 1 MiB young generation: the daemon's garbage is small and short-lived, and Node's default (16 MiB
// semi-spaces) kept ~30 MiB more RSS on an idle node (bench/memory.ts).
// In the container image (no src/), runs the compiled CLI. In a checkout, runs the TypeScript source
// through tsx, so it is never stale; KAGAMI_FROM_DIST=1 runs the build (`npm run build`) instead.
import { existsSync } from 'node:fs'

const dist = new URL('../dist/main.js', import.meta.url)
const source = new URL('../src/main.ts', import.meta.url)
if (existsSync(dist) && (!existsSync(source) || process.env.KAGAMI_FROM_DIST === '1')) {
  await import(dist.href)
} else {
  const { register } = await import('tsx/esm/api')
  register()
  await import(source.href)
}
