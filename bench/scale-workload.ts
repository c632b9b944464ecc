/**
 * The scale bench's keys, the same in the coordinator and in every worker process (bench/scale.ts,
 * bench/scale-worker.ts): ~3,000 keys a node, most of them base layers every node holds.
 */
import { digestOf } from '../src/oci/index.js'
import { digestKey, type RoutingKey } from '../src/routing/keys.js'

export interface Workload {
  /** Base-layer pool every node draws from (each held with probability 0.9). */
  commonKeys: number
  /** Less common keys: drawn from a pool, so a few nodes share each. */
  rarePool: number
  rarePerNode: number
  seed: number
}

export function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export const common = (i: number): RoutingKey => digestKey(digestOf(`scale-common-${i}`))
export const rare = (i: number): RoutingKey => digestKey(digestOf(`scale-rare-${i}`))
export const tag = (name: string): RoutingKey => ({
  kind: 'tag',
  registry: 'registry.example.com',
  repository: `team/${name}`,
  tag: 'v1',
})

/** A node's initial keys: ~90 % of the common pool, some rare keys, a few tags. */
export function nodeKeys(w: Workload, index: number): { keys: RoutingKey[]; rare: number[] } {
  const r = rng(w.seed * 7919 + index)
  const keys: RoutingKey[] = []
  for (let i = 0; i < 30; i++) keys.push(tag(`app-${Math.floor(r() * 200)}`))
  for (let i = 0; i < w.commonKeys; i++) if (r() < 0.9) keys.push(common(i))
  const rareIds: number[] = []
  for (let i = 0; i < w.rarePerNode; i++) rareIds.push(Math.floor(r() * w.rarePool))
  for (const i of rareIds) keys.push(rare(i))
  return { keys, rare: rareIds }
}
