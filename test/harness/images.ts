import { createCipheriv, createHash, type Hash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { type Digest, type Descriptor, digestOf, MediaType } from '../../src/oci/index.js'
import { run } from './process.js'

export interface BuildImageInit {
  /** Directory to write the OCI layout into (created). */
  dir: string
  /** Size in bytes of the random file inside each layer. */
  layers: number[]
  /** e.g. `['linux/amd64', 'linux/arm64']`; two or more give an OCI index. Default one platform. */
  platforms?: string[]
  /** Seed for the deterministic random bytes, so two builds with one seed are identical. */
  seed?: string
  /** gzip the layers (default true); false writes plain tar, which is faster for big benchmark layers. */
  gzip?: boolean
}

export interface BuiltBlob {
  sizeBytes: number
  mediaType: string
  path: string
}

export interface BuiltImage {
  dir: string
  /** Root of the image: the index for ≥ 2 platforms, else the manifest. */
  root: Descriptor
  manifests: { platform: string; descriptor: Descriptor; config: Descriptor; layers: Descriptor[] }[]
  /** Every blob in the layout (index, manifests, configs, layers) by digest. */
  blobs: Map<Digest, BuiltBlob>
}

/** Deterministic pseudo-random bytes (AES-CTR keystream): fast enough for GiB-sized layers. */
function randomStream(seed: string, sizeBytes: number): Readable {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16)
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16))
  const zero = Buffer.alloc(1 << 20)
  let left = sizeBytes
  return new Readable({
    highWaterMark: 1 << 20,
    read() {
      if (left === 0) return void this.push(null)
      const n = Math.min(left, zero.length)
      left -= n
      this.push(cipher.update(zero.subarray(0, n)))
    },
  })
}

function tarHeader(name: string, sizeBytes: number): Buffer {
  const h = Buffer.alloc(512)
  const put = (value: string, offset: number, length: number): void => {
    h.write(value, offset, Math.min(length, Buffer.byteLength(value)), 'ascii')
  }
  const octal = (n: number, length: number): string => n.toString(8).padStart(length - 1, '0') + '\0'
  put(name, 0, 100)
  put(octal(0o644, 8), 100, 8)
  put(octal(0, 8), 108, 8)
  put(octal(0, 8), 116, 8)
  put(octal(sizeBytes, 12), 124, 12)
  put(octal(0, 12), 136, 12)
  put('        ', 148, 8) // checksum is computed with this field as spaces
  put('0', 156, 1)
  put('ustar\0', 257, 6)
  put('00', 263, 2)
  let sum = 0
  for (const b of h) sum += b
  put(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8)
  return h
}

/** A one-file tar stream: header, data, padding to 512, two zero blocks. */
function tarStream(name: string, sizeBytes: number, seed: string): Readable {
  async function* gen(): AsyncGenerator<Buffer> {
    yield tarHeader(name, sizeBytes)
    for await (const chunk of randomStream(seed, sizeBytes)) yield chunk as Buffer
    yield Buffer.alloc(((512 - (sizeBytes % 512)) % 512) + 1024)
  }
  return Readable.from(gen(), { objectMode: false })
}

function hashing(hash: Hash, count: { n: number }): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk)
      count.n += chunk.length
      cb(null, chunk)
    },
  })
}

async function writeBlob(blobsDir: string, bytes: string): Promise<Descriptor & { path: string }> {
  const digest = digestOf(bytes)
  const path = join(blobsDir, digest.slice(7))
  await writeFile(path, bytes)
  return { mediaType: '', digest, size: Buffer.byteLength(bytes), path }
}

/** Builds an OCI image layout with real tar layers (random file contents), one manifest per platform. */
export async function buildImage(init: BuildImageInit): Promise<BuiltImage> {
  const platforms = init.platforms ?? ['linux/amd64']
  const seed = init.seed ?? `${Date.now()}-${Math.random()}`
  const gzip = init.gzip ?? true
  const blobsDir = join(init.dir, 'blobs', 'sha256')
  await mkdir(blobsDir, { recursive: true })
  const blobs = new Map<Digest, BuiltBlob>()
  const layerType = gzip ? MediaType.ociLayerGzip : MediaType.ociLayer
  const manifests: BuiltImage['manifests'] = []

  for (const platform of platforms) {
    const [os, architecture] = platform.split('/') as [string, string]
    const layers: Descriptor[] = []
    const diffIds: string[] = []
    for (const [i, size] of init.layers.entries()) {
      const tmp = join(blobsDir, `tmp-${platform.replace('/', '-')}-${i}`)
      const diff = createHash('sha256')
      const blob = createHash('sha256')
      const blobCount = { n: 0 }
      const tar = tarStream(`layer-${i}.bin`, size, `${seed}/${platform}/${i}`)
      const blobHash = hashing(blob, blobCount)
      if (gzip)
        await pipeline(
          tar,
          hashing(diff, { n: 0 }),
          createGzip({ level: 1 }),
          blobHash,
          createWriteStream(tmp),
        )
      else await pipeline(tar, hashing(diff, { n: 0 }), blobHash, createWriteStream(tmp))
      const digest = `sha256:${blob.digest('hex')}` as Digest
      await rename(tmp, join(blobsDir, digest.slice(7)))
      diffIds.push(`sha256:${diff.digest('hex')}`)
      layers.push({ mediaType: layerType, digest, size: blobCount.n })
      blobs.set(digest, {
        sizeBytes: blobCount.n,
        mediaType: layerType,
        path: join(blobsDir, digest.slice(7)),
      })
    }
    const configJson = JSON.stringify({
      architecture,
      os,
      config: { Cmd: ['/layer-0.bin'] },
      rootfs: { type: 'layers', diff_ids: diffIds },
    })
    const c = await writeBlob(blobsDir, configJson)
    const config: Descriptor = { mediaType: MediaType.ociConfig, digest: c.digest, size: c.size }
    blobs.set(c.digest, { sizeBytes: c.size, mediaType: MediaType.ociConfig, path: c.path })
    const manifestJson = JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config,
      layers,
    })
    const m = await writeBlob(blobsDir, manifestJson)
    blobs.set(m.digest, { sizeBytes: m.size, mediaType: MediaType.ociManifest, path: m.path })
    manifests.push({
      platform,
      descriptor: {
        mediaType: MediaType.ociManifest,
        digest: m.digest,
        size: m.size,
        platform: { os, architecture },
      },
      config,
      layers,
    })
  }

  let root: Descriptor
  if (manifests.length === 1) {
    const { platform: _p, ...rest } = (manifests[0] as BuiltImage['manifests'][number]).descriptor
    root = rest
  } else {
    const indexJson = JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.ociIndex,
      manifests: manifests.map((m) => m.descriptor),
    })
    const ix = await writeBlob(blobsDir, indexJson)
    blobs.set(ix.digest, { sizeBytes: ix.size, mediaType: MediaType.ociIndex, path: ix.path })
    root = { mediaType: MediaType.ociIndex, digest: ix.digest, size: ix.size }
  }
  await writeFile(join(init.dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  await writeFile(join(init.dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [root] }))
  return { dir: init.dir, root, manifests, blobs }
}

/** Pushes a layout to a registry with skopeo (all platforms). `ref` is `HOST/repo:tag`. */
export async function pushImage(
  layoutDir: string,
  ref: string,
  options: { creds?: string; timeoutMs?: number } = {},
): Promise<void> {
  await run(
    'skopeo',
    [
      '--insecure-policy',
      'copy',
      '--all',
      '--quiet',
      '--dest-tls-verify=false',
      '--preserve-digests',
      ...(options.creds !== undefined ? ['--dest-creds', options.creds] : []),
      `oci:${layoutDir}`,
      `docker://${ref}`,
    ],
    // a many-platform image is ~1,000 blobs: on a loaded machine that outlasts the 2 min default
    { timeoutMs: options.timeoutMs },
  )
}
