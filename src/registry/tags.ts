import type { Logger } from 'pino'
import { Counter, type Registry } from 'prom-client'
import type { DistributionRequest } from '../oci/index.js'
import { NotFoundError } from '../store/errors.js'
import type { TagAnswer, TagQuery } from '../upstream/client.js'

type ManifestRequest = Extract<DistributionRequest, { kind: 'manifest' }>

/**
 * Where a tag may come from when the upstream registry does not answer:
 * - `fallback` (default): upstream first; local store or peers only while upstream is unreachable;
 * - `never`: upstream first; while it is unreachable, only this node's own store (never another node's tag);
 * - `always`: never ask upstream; a tag is served as the local store or any peer has it (fast, may be stale).
 */
export type TagPolicy = 'never' | 'fallback' | 'always'

export interface Upstream {
  resolveTag(query: TagQuery): Promise<TagAnswer>
}

export interface TagResolverComponents {
  upstream: Upstream
  logger: Logger
  metrics: Registry
}

export interface TagResolverInit {
  policy: TagPolicy
}

/** What the mirror does next with a manifest request. */
export interface TagRoute {
  /** The request to serve: by digest once upstream named one (answered for the tag all the same). */
  req: ManifestRequest
  /** Whether peers may be asked; false keeps the lookup to this node's store. */
  peers: boolean
}

// Repositories upstream refused without credentials, remembered so an outage does not hand their tags out
// from peers either (a node that never saw the refusal cannot know; see README). Bounded: oldest forgotten first.
const MAX_PRIVATE_REPOSITORIES = 4096

/**
 * The tag policy (design §5): a tag resolves as the upstream registry says while it answers, and from the
 * node's store or peers only when it does not. The mirror calls `route` before its local/peer lookup.
 */
export class TagResolver {
  private readonly log: Logger
  private readonly fallbacks: Counter<'registry' | 'reason'>
  private readonly privateRepos = new Set<string>()

  constructor(
    private readonly components: TagResolverComponents,
    private readonly init: TagResolverInit,
  ) {
    this.log = components.logger.child({ component: 'tags' })
    this.fallbacks = new Counter({
      name: 'kagami_tag_fallback_total',
      help: 'Tag requests served from the local store or peers because the upstream registry did not answer, by registry and reason',
      labelNames: ['registry', 'reason'],
      registers: [components.metrics],
    })
  }

  /**
   * Decides how a manifest request by tag is served. Throws NotFoundError (→ 404, containerd goes upstream
   * itself) when upstream says the tag does not exist or needs credentials: a peer's copy is never used then.
   */
  async route(
    req: ManifestRequest,
    client: { accept?: string; authorization?: string; signal: AbortSignal },
  ): Promise<TagRoute> {
    if (!('tag' in req.reference) || this.init.policy === 'always') return { req, peers: true }
    const { registry, repository } = req
    const tag = req.reference.tag
    const answer = await this.components.upstream.resolveTag({
      registry,
      repository,
      tag,
      accept: client.accept,
      authorization: client.authorization,
      signal: client.signal,
    })
    const ref = `${registry}/${repository}:${tag}`
    switch (answer.kind) {
      case 'found':
        // Local store or peers by digest: a local tag pointing elsewhere is as stale as a peer's.
        return { req: { ...req, reference: { digest: answer.digest } }, peers: true }
      case 'not-found':
        throw new NotFoundError(`tag ${ref} does not exist upstream`)
      case 'denied':
        this.remember(`${registry}/${repository}`)
        throw new NotFoundError(`tag ${ref} needs credentials upstream (${answer.status})`)
      case 'unavailable': {
        this.fallbacks.inc({ registry, reason: answer.reason })
        const privateRepo = this.privateRepos.has(`${registry}/${repository}`)
        this.log.debug(
          { ref, reason: answer.reason, detail: answer.detail, privateRepo },
          'upstream did not answer for a tag; falling back',
        )
        // A private repository's tag stays on the node that pulled it with credentials.
        return { req, peers: this.init.policy === 'fallback' && !privateRepo }
      }
    }
  }

  private remember(repo: string): void {
    this.privateRepos.delete(repo)
    this.privateRepos.add(repo)
    if (this.privateRepos.size > MAX_PRIVATE_REPOSITORIES)
      this.privateRepos.delete(this.privateRepos.values().next().value as string)
  }
}
