import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

// No Docker engine runs on the build machine and hadolint is not packaged for Debian 12, so the Dockerfile
// is checked structurally here against the rules we care about (a subset of hadolint's).
const root = fileURLToPath(new URL('../../', import.meta.url))

describe('Dockerfile (structural lint; the image is not built in CI)', () => {
  it('is multi-stage on a slim Node 24 (LTS) base, builds with npm ci, prunes dev deps, runs kagami', async () => {
    const text = await readFile(`${root}Dockerfile`, 'utf8')
    const pkg = JSON.parse(await readFile(`${root}package.json`, 'utf8')) as {
      engines: { node: string }
      devDependencies: Record<string, string>
    }
    const lines = text.split('\n').filter((l) => !l.trim().startsWith('#'))
    const froms = lines.filter((l) => /^FROM /i.test(l))
    expect(froms.length).toBeGreaterThanOrEqual(2)
    for (const f of froms) {
      expect(f).not.toMatch(/:latest\b/) // DL3007
      expect(f).toMatch(/^FROM node:24-bookworm-slim\b/)
    }
    // the image, the engines field and the Node that `npm ci` installs for tests, bench and demo agree
    expect(pkg.engines.node).toBe('>=24')
    expect(pkg.devDependencies.node).toMatch(/^\^24\./)
    expect(pkg.devDependencies['@types/node']).toMatch(/^\^24\./)
    expect(text).toMatch(/^EXPOSE 29020 29021 29022$/m)
    expect(text).toMatch(/RUN npm ci\b/)
    expect(text).toMatch(/npm prune --omit=dev/)
    expect(text).toMatch(/^ENTRYPOINT \["kagami"\]$/m)
    expect(text).toMatch(/org\.opencontainers\.image\.source/)
    expect(text).not.toMatch(/^ADD https?:/m) // DL3020: no remote ADD
    expect(text).not.toMatch(/apt-get install(?!.*--no-install-recommends)/) // DL3015
    expect(text).toMatch(/^WORKDIR \//m) // DL3000: absolute WORKDIR
    // every file the runtime needs is copied: compiled code, protos, the bin shim
    for (const p of ['dist', 'proto', 'bin', 'node_modules'])
      expect(text).toMatch(new RegExp(`COPY .*\\b${p}\\b`))
  })

  it('.dockerignore keeps the build context small and free of local state', async () => {
    const ignore = (await readFile(`${root}.dockerignore`, 'utf8')).split('\n')
    for (const p of ['.git', 'node_modules', 'dist', 'test']) expect(ignore).toContain(p)
  })

  it('the build stage has every local file the bundle script imports (in the context and copied)', async () => {
    const text = await readFile(`${root}Dockerfile`, 'utf8')
    const ignore = (await readFile(`${root}.dockerignore`, 'utf8')).split('\n')
    const script = await readFile(`${root}scripts/bundle.mjs`, 'utf8')
    const dirs = new Set([...script.matchAll(/['`]\.\/([\w-]+)\//g)].map((m) => `scripts/${m[1]}`))
    expect(dirs.size).toBeGreaterThan(0) // the wasm stand-ins in scripts/shims
    for (const p of ['scripts/bundle.mjs', ...dirs]) {
      expect(text).toMatch(new RegExp(`^COPY ${p}\\b`, 'm'))
      if (ignore.includes('scripts')) expect(ignore).toContain(`!${p}`)
    }
  })
})
