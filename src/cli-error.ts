/**
 * How a failed command ends: one line naming the problem, never a stack. A setting that cannot be used
 * (ConfigError) exits 2 without `error:`; anything else exits 1.
 */
export function failure(err: unknown): { line: string; exitCode: number } {
  const e = err as Error
  const config = e?.name === 'ConfigError'
  return { line: `kagami: ${config ? '' : 'error: '}${e?.message ?? String(err)}`, exitCode: config ? 2 : 1 }
}
