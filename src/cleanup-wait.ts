import { readFile } from 'node:fs/promises'
import { isIP } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

/**
 * `kagami cleanup-wait`: the uninstall hook's waiter. Helm waits for hook Jobs and Pods only (a hook
 * DaemonSet counts as done once created), so this Job polls the cleanup DaemonSet's pods until every node
 * has run `kagami cleanup`. It never blocks an uninstall: a pod the kubelet never started (NotReady or
 * unreachable node) is skipped after a grace period, and at the deadline it reports what is left and
 * succeeds anyway — a leftover hosts.toml is harmless once the mirror is gone (containerd falls through).
 */
export interface CleanupWaitInit {
  /** `https://<host>:<port>` of the Kubernetes API. */
  apiUrl: string
  token: string
  namespace: string
  daemonSet: string
  timeoutMs: number
  /** A pod with no `status.startTime` this long after the wait began is on a node that is not running pods. */
  notStartedGraceMs?: number
  pollMs?: number
}

export interface CleanupWaitComponents {
  /** The global fetch in production (the Job sets NODE_EXTRA_CA_CERTS to the cluster CA). */
  fetch: typeof fetch
  log: (line: string) => void
}

export interface CleanupWaitResult {
  done: string[]
  skipped: string[]
  pending: string[]
  timedOut: boolean
}

interface Pod {
  spec?: { nodeName?: string }
  metadata: { name: string }
  status?: { startTime?: string; conditions?: { type: string; status: string }[] }
}

async function getJson<T>(
  components: CleanupWaitComponents,
  init: CleanupWaitInit,
  path: string,
): Promise<T> {
  const res = await components.fetch(`${init.apiUrl}${path}`, {
    headers: { authorization: `Bearer ${init.token}`, accept: 'application/json' },
    signal: AbortSignal.timeout(5000),
  })
  if (!res.ok) throw new Error(`GET ${path}: ${res.status}`)
  return (await res.json()) as T
}

export async function waitForCleanup(
  components: CleanupWaitComponents,
  init: CleanupWaitInit,
): Promise<CleanupWaitResult> {
  const started = Date.now()
  const grace = init.notStartedGraceMs ?? 20_000
  const ns = encodeURIComponent(init.namespace)
  const selector = encodeURIComponent(`app.kubernetes.io/name=${init.daemonSet}`)
  let last: CleanupWaitResult = { done: [], skipped: [], pending: [], timedOut: false }
  for (;;) {
    try {
      const ds = await getJson<{
        metadata: { generation?: number }
        status?: { desiredNumberScheduled?: number; observedGeneration?: number }
      }>(components, init, `/apis/apps/v1/namespaces/${ns}/daemonsets/${encodeURIComponent(init.daemonSet)}`)
      const pods = (
        await getJson<{ items: Pod[] }>(
          components,
          init,
          `/api/v1/namespaces/${ns}/pods?labelSelector=${selector}`,
        )
      ).items
      const result: CleanupWaitResult = { done: [], skipped: [], pending: [], timedOut: false }
      for (const pod of pods) {
        const where = pod.spec?.nodeName ?? pod.metadata.name
        const ready = pod.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true
        if (ready) result.done.push(where)
        else if (pod.status?.startTime === undefined && Date.now() - started >= grace)
          result.skipped.push(where)
        else result.pending.push(where)
      }
      last = result
      const observed = (ds.status?.observedGeneration ?? -1) >= (ds.metadata.generation ?? 0)
      const desired = ds.status?.desiredNumberScheduled ?? Number.POSITIVE_INFINITY
      if (observed && pods.length >= desired && result.pending.length === 0) return result
    } catch (err) {
      components.log(`cleanup-wait: ${(err as Error).message}; retrying`)
    }
    if (Date.now() - started >= init.timeoutMs) return { ...last, timedOut: true }
    await sleep(init.pollMs ?? 1000)
  }
}

/** In-cluster API address and service-account token, as every pod sees them. */
export async function inClusterApi(env: NodeJS.ProcessEnv): Promise<{ apiUrl: string; token: string }> {
  const host = env.KUBERNETES_SERVICE_HOST
  if (host === undefined || host === '') throw new Error('not in a cluster: KUBERNETES_SERVICE_HOST is unset')
  const port = env.KUBERNETES_SERVICE_PORT ?? '443'
  const token = (await readFile('/var/run/secrets/kubernetes.io/serviceaccount/token', 'utf8')).trim()
  return { apiUrl: `https://${isIP(host) === 6 ? `[${host}]` : host}:${port}`, token }
}
