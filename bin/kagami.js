#!/usr/bin/env node
// Runs the compiled CLI when built (the container image), else the TypeScript source through tsx (a checkout).
import { existsSync } from 'node:fs'

const dist = new URL('../dist/main.js', import.meta.url)
if (existsSync(dist) && !process.env.KAGAMI_FROM_SOURCE) {
  await import(dist.href)
} else {
  const { register } = await import('tsx/esm/api')
  register()
  await import(new URL('../src/main.ts', import.meta.url).href)
}
