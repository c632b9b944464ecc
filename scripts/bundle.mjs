// Bundles the CLI and the daemon into dist/kagami.mjs (+ lazily loaded dist/kagami-*.mjs chunks), minified:
// what the container image and the bench run (bin/kagami.js prefers it over dist/main.js).
//
// Why: an idle daemon's V8 heap held ~15 MiB of module source text and the metadata of ~1,000 files from
// node_modules (bench/memory.ts, issue #14). One minified bundle keeps a fraction of that, and code split
// into chunks (the daemon, the status page) is only read when first imported.
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { build } from 'esbuild'

/**
 * A few builtins through require(), not an ESM import: the namespace of an imported builtin reads every
 * export, and their lazy getters load modules the daemon never uses. node:http's WebSocket/MessageEvent
 * load Node's whole fetch implementation (undici, ~0.75 MiB of source, and web streams); node:util, node:fs
 * and node:process pull in 30–40 more internal modules each (counted with process.moduleLoadList).
 */
const builtinsViaRequire = {
  name: 'builtins-via-require',
  setup(b) {
    b.onResolve({ filter: /^(node:)?(http|util|fs|process)$/ }, (args) =>
      args.namespace === 'builtins-via-require'
        ? { path: args.path, external: true }
        : { path: args.path, namespace: 'builtins-via-require' },
    )
    b.onLoad({ filter: /.*/, namespace: 'builtins-via-require' }, (args) => ({
      contents: `module.exports = require(${JSON.stringify(args.path)})`,
      loader: 'js',
    }))
  },
}

/**
 * No WebAssembly in the daemon. Four dependencies compiled a wasm module when imported: V8's wasm compilers
 * and the modules' memories kept ~5 MiB of an idle daemon's RSS (bench/memory.ts) for work that is small
 * here (the DHT's messages). With `WebAssembly` undefined in the bundle, xsalsa20 (@libp2p/pnet's cipher)
 * and long (protobufjs' int64) take their JavaScript paths; @chainsafe/libp2p-noise's ChaCha20-Poly1305 and
 * SHA-256 for messages under 1,200 bytes, which have none, get the same functions on node:crypto
 * (scripts/shims/, checked against the originals in test/unit/bundle-shims.spec.ts).
 */
const noWasm = {
  name: 'no-wasm',
  setup(b) {
    b.onResolve({ filter: /^@chainsafe\/as-(chacha20poly1305|sha256)$/ }, (args) => ({
      path: fileURLToPath(import.meta.resolve(`./shims/${args.path.slice('@chainsafe/'.length)}.ts`)),
    }))
  },
}

/**
 * kad-dht's table of a KadID prefix for each of the 65,536 16-bit prefixes (routing-table refresh): as a
 * literal array it is 0.4 MiB of source and ~0.7 MiB of arrays held from start. The bundle writes it to
 * dist/kagami-kad-prefixes.bin (native-endian uint32) and reads it on first use, a 256 KiB typed array.
 */
const kadPrefixes = {
  name: 'kad-prefixes',
  setup(b) {
    b.onLoad({ filter: /[\\/]@libp2p[\\/]kad-dht[\\/].*[\\/]generated-prefix-list\.js$/ }, async (args) => {
      const { default: list } = await import(pathToFileURL(args.path).href)
      if (!Array.isArray(list) || list.length !== 65536) throw new Error(`unexpected ${args.path}`)
      await writeFile('dist/kagami-kad-prefixes.bin', new Uint8Array(Uint32Array.from(list).buffer))
      return {
        loader: 'js',
        contents: `import { readFileSync } from 'node:fs'
let table
const load = () => {
  if (table === undefined) {
    const bytes = readFileSync(new URL('./kagami-kad-prefixes.bin', import.meta.url))
    table = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
  }
  return table
}
export default new Proxy([], { get: (_, key) => Reflect.get(load(), key) })
`,
      }
    })
  },
}

// chunks are named by content hash: drop the previous build's
await mkdir('dist', { recursive: true })
for (const name of await readdir('dist')) if (/^kagami.*\.(mjs|txt)$/.test(name)) await rm(`dist/${name}`)

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
  define: { WebAssembly: 'undefined' },
  // Loaded from node_modules if ever used, not read with the daemon's code: fastify's schema compilers
  // (Ajv, fast-json-stringify: src/registry/server.ts passes lazy ones, no route has a schema) and its
  // inject() (tests only). ~0.3 MiB of source an idle daemon would hold.
  external: ['@fastify/ajv-compiler', '@fastify/fast-json-stringify-compiler', 'light-my-request'],
  plugins: [builtinsViaRequire, noWasm, kadPrefixes],
})
