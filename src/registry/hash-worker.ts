import { Worker } from 'node:worker_threads'

/**
 * SHA-256 of relayed blobs on a worker thread. Why: a `--cpu-prof` of the mirror relaying a 1 GiB blob
 * showed the digest as its largest cost (~0.7 s per GiB, next to ~0.4 s for the socket write), all on the
 * one JS thread that also moves the bytes. Hashed on a second thread, the copy and the hash overlap.
 *
 * Chunks in SharedArrayBuffer-backed pool buffers (buffer-pool.ts) are shared with the worker, not
 * copied; any other chunk is copied by postMessage. The worker starts on first use and stops after
 * `idleMs` without a job, so an idle daemon carries no second V8 isolate.
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const jobs = new Map()
parentPort.on('message', (m) => {
  if (m.t === 'u') {
    let h = jobs.get(m.id)
    if (h === undefined) jobs.set(m.id, (h = createHash('sha256')))
    h.update(m.sab !== undefined ? new Uint8Array(m.sab, m.off, m.len) : m.buf)
    parentPort.postMessage({ t: 'a', id: m.id, len: m.len })
  } else if (m.t === 'd') {
    const h = jobs.get(m.id) ?? createHash('sha256')
    jobs.delete(m.id)
    parentPort.postMessage({ t: 'd', id: m.id, hex: h.digest('hex') })
  } else if (m.t === 'c') {
    jobs.delete(m.id)
  }
})
`

type Reply = { t: 'a'; id: number; len: number } | { t: 'd'; id: number; hex: string }

interface JobState {
  onHashed: (len: number) => void
  onDigest?: (hex: string) => void
  onError: (err: Error) => void
}

export interface HashWorkerInit {
  /** Stop the thread after this long without a job (default 10 s). */
  idleMs?: number
}

export class HashWorker {
  private worker: Worker | undefined
  private readonly jobs = new Map<number, JobState>()
  private nextId = 0
  private idleTimer: NodeJS.Timeout | undefined

  constructor(private readonly init: HashWorkerInit = {}) {}

  /**
   * Starts one digest; `onHashed(len)` runs as each chunk is hashed (its buffer may then be reused), and
   * `onError` if the thread dies (the job is then lost).
   */
  job(onHashed: (len: number) => void, onError: (err: Error) => void): HashJob {
    clearTimeout(this.idleTimer)
    const worker = this.start()
    const id = this.nextId++
    const state: JobState = { onHashed, onError }
    this.jobs.set(id, state)
    return {
      update: (chunk) => {
        if (chunk.buffer instanceof SharedArrayBuffer) {
          worker.postMessage({ t: 'u', id, sab: chunk.buffer, off: chunk.byteOffset, len: chunk.byteLength })
        } else {
          worker.postMessage({ t: 'u', id, buf: chunk, len: chunk.byteLength })
        }
      },
      digest: () =>
        new Promise<string>((resolve, reject) => {
          state.onDigest = (hex) => {
            this.end(id)
            resolve(hex)
          }
          state.onError = (err) => {
            onError(err)
            reject(err)
          }
          worker.postMessage({ t: 'd', id })
        }),
      cancel: () => {
        if (!this.jobs.has(id)) return
        worker.postMessage({ t: 'c', id })
        this.end(id)
      },
    }
  }

  private start(): Worker {
    if (this.worker !== undefined) return this.worker
    const worker = new Worker(WORKER_SOURCE, { eval: true })
    // never what keeps the daemon alive
    worker.unref()
    worker.on('message', (m: Reply) => {
      const job = this.jobs.get(m.id)
      if (job === undefined) return
      if (m.t === 'a') job.onHashed(m.len)
      else job.onDigest?.(m.hex)
    })
    const fail = (err: Error): void => {
      if (this.worker === worker) this.worker = undefined
      const jobs = [...this.jobs.values()]
      this.jobs.clear()
      for (const j of jobs) j.onError(err)
    }
    worker.on('error', fail)
    worker.on('exit', () => fail(new Error('hash worker exited')))
    this.worker = worker
    return worker
  }

  private end(id: number): void {
    this.jobs.delete(id)
    if (this.jobs.size > 0) return
    clearTimeout(this.idleTimer)
    this.idleTimer = setTimeout(() => void this.stop(), this.init.idleMs ?? 10_000).unref()
  }

  async stop(): Promise<void> {
    clearTimeout(this.idleTimer)
    const w = this.worker
    this.worker = undefined
    if (w !== undefined && this.jobs.size === 0) await w.terminate()
    else if (w !== undefined) this.worker = w
  }
}

export interface HashJob {
  update(chunk: Buffer): void
  /** The hex digest of everything updated, once the worker hashed it all. */
  digest(): Promise<string>
  cancel(): void
}
