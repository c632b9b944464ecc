/** Read throughput of a 1 GiB blob from the containerd Store: direct file reads vs gRPC Content/Read. */
import { join } from 'node:path'
import pino from 'pino'
import { ContainerdStore } from '../src/store/containerd.js'
import {
  buildImage,
  pushImage,
  startContainerd,
  startRegistry,
  tempDir,
  writeHostsDir,
} from '../test/harness/index.js'
import { GiB, log, median, stats } from './lib.js'

export interface StoreReadBenchResult {
  blobBytes: number
  runs: number
  /** Medians (what bench/run.ts reports). */
  gibPerSecond: { file: number; grpc: number }
  /** Min / median / max over the runs, and every run, per path. */
  stats: Record<'file' | 'grpc', { min: number; median: number; max: number; runs: number[] }>
}

async function drain(
  store: ContainerdStore,
  digest: Parameters<ContainerdStore['read']>[0],
): Promise<number> {
  let n = 0
  for await (const c of await store.read(digest)) n += (c as Buffer).length
  return n
}

export async function benchStoreRead(
  init: { blobBytes?: number; runs?: number } = {},
): Promise<StoreReadBenchResult> {
  const runs = init.runs ?? 3
  const cleanup: (() => Promise<void>)[] = []
  try {
    const tmp = await tempDir('bench-store')
    cleanup.push(() => tmp.remove())
    const image = await buildImage({
      dir: join(tmp.path, 'img'),
      layers: [(init.blobBytes ?? GiB) - 1536],
      gzip: false,
      seed: 'store',
    })
    const layer = image.manifests[0]!.layers[0]!
    const registry = await startRegistry()
    cleanup.push(() => registry.destroy())
    await pushImage(image.dir, `${registry.host}/bench/store:v1`)
    await writeHostsDir(join(tmp.path, 'hosts'), { registryHost: registry.host })
    const c = await startContainerd({ name: 'store-bench' })
    cleanup.push(() => c.destroy())
    await c.pull(`${registry.host}/bench/store:v1`, { hostsDir: join(tmp.path, 'hosts'), timeoutMs: 600_000 })
    const logger = pino({ level: 'silent' })
    const file = new ContainerdStore(
      { logger },
      { address: c.address, namespace: c.namespace, contentDir: c.contentDir },
    )
    const grpc = new ContainerdStore({ logger }, { address: c.address, namespace: c.namespace })
    cleanup.push(
      () => file.close(),
      () => grpc.close(),
    )
    const rates = { file: [] as number[], grpc: [] as number[] }
    for (let i = 0; i < runs; i++) {
      for (const [name, store] of [
        ['file', file],
        ['grpc', grpc],
      ] as const) {
        const t0 = performance.now()
        const n = await drain(store, layer.digest)
        if (n !== layer.size) throw new Error(`${name} read ${n} bytes, want ${layer.size}`)
        rates[name].push(n / ((performance.now() - t0) / 1000) / GiB)
      }
      log(
        `store: run ${i + 1}: file ${rates.file.at(-1)!.toFixed(2)} GiB/s, gRPC ${rates.grpc.at(-1)!.toFixed(2)} GiB/s`,
      )
    }
    const summary = (r: number[]) => {
      const st = stats(r)
      return { min: st.min, median: st.p50, max: st.max, runs: r }
    }
    return {
      blobBytes: layer.size,
      runs,
      gibPerSecond: { file: median(rates.file), grpc: median(rates.grpc) },
      stats: { file: summary(rates.file), grpc: summary(rates.grpc) },
    }
  } finally {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = await benchStoreRead({
    blobBytes: Number(process.env.BLOB_BYTES ?? GiB),
    runs: Number(process.env.RUNS ?? 3),
  })
  console.log(JSON.stringify(r, null, 2))
  const row = (name: string, s: StoreReadBenchResult['stats']['file']): string =>
    `| ${name} | ${s.min.toFixed(2)} | ${s.median.toFixed(2)} | ${s.max.toFixed(2)} |`
  console.log(
    [
      `\nStore read of a ${(r.blobBytes / GiB).toFixed(2)} GiB blob, ${r.runs} runs (GiB/s)`,
      '| path | min | median | max |',
      '|---|---|---|---|',
      row('direct file', r.stats.file),
      row('gRPC Content/Read', r.stats.grpc),
      `file ÷ gRPC (medians): ${(r.stats.file.median / r.stats.grpc.median).toFixed(1)}×`,
    ].join('\n'),
  )
}
