// Bundles the CLI and the daemon into dist/kagami.mjs (+ lazily loaded dist/kagami-*.mjs chunks), minified:
// what the container image and the bench run (bin/kagami.js prefers it over dist/main.js).
//
// Why: an idle daemon's V8 heap held ~15 MiB of module source text and the metadata of ~1,000 files from
// node_modules (bench/memory.ts, issue #14). One minified bundle keeps a fraction of that, and code split
// into chunks (the daemon, the status page) is only read when first imported.
import { build } from 'esbuild'

await build({
  entryPoints: { kagami: 'src/main.ts' },
  outdir: 'dist',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node24',
  minify: true,
  // stack traces keep our function names: logs name where an error came from
  keepNames: true,
  outExtension: { '.js': '.mjs' },
  chunkNames: 'kagami-[name]-[hash]',
  // a few CommonJS dependencies require() node builtins: give the ESM bundle a require
  banner: {
    js: "import{createRequire as __kagamiRequire}from'node:module';const require=__kagamiRequire(import.meta.url);",
  },
  // one non-ASCII character (a licence comment) made V8 hold the whole file as UTF-16, twice its size
  legalComments: 'external',
  charset: 'ascii',
  logLevel: 'warning',
})
