/** A parsed `WWW-Authenticate` challenge (RFC 7235), as registries send on 401. */
export interface Challenge {
  scheme: string
  params: Record<string, string>
}

/**
 * Parses the first challenge of a `WWW-Authenticate` header:
 * `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:x:pull"`.
 * Quoted values may contain commas and escaped quotes. Returns undefined for an empty or garbled header.
 */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (header === undefined) return undefined
  const m = /^\s*([A-Za-z][A-Za-z0-9._~+/-]*)\s*(.*)$/s.exec(header)
  if (m === null) return undefined
  const scheme = (m[1] as string).toLowerCase()
  const params: Record<string, string> = {}
  const re = /\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)/gy
  const rest = m[2] as string
  let p: RegExpExecArray | null
  while (re.lastIndex < rest.length && (p = re.exec(rest)) !== null) {
    const value = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '')
    params[(p[1] as string).toLowerCase()] = value
    if (p[0] === '') break
  }
  return { scheme, params }
}
