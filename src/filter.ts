/**
 * Include/exclude filter over `registry/repository` (e.g. `docker.io/library/nginx`). Globs: `*` matches any
 * run of characters including `/`, `?` one character. Empty include = everything; exclude wins.
 */
export interface RepositoryFilter {
  allows(registry: string, repository: string): boolean
}

function globToRegExp(glob: string): RegExp {
  const escaped = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.')
  return new RegExp(`^${escaped}$`)
}

export function repositoryFilter(
  init: { include?: readonly string[]; exclude?: readonly string[] } = {},
): RepositoryFilter {
  const include = (init.include ?? []).map(globToRegExp)
  const exclude = (init.exclude ?? []).map(globToRegExp)
  return {
    allows(registry, repository) {
      const name = `${registry}/${repository}`
      if (exclude.some((r) => r.test(name))) return false
      return include.length === 0 || include.some((r) => r.test(name))
    },
  }
}
