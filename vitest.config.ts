import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.spec.ts'],
    // Real containerd, registry and DHT nodes start per suite; keep suites from starving each other on 2 cores.
    fileParallelism: true,
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
    pool: 'forks',
    // memory bounds in tests measure what is retained after a collection, not garbage not yet collected
    execArgv: ['--expose-gc'],
  },
})
