import { readFileSync } from 'node:fs'

/**
 * kagami's version, from package.json: `src/` (tsx) and `dist/` (the image) both sit one level below it, and
 * the image copies package.json next to them. Read once, at import.
 */
export const VERSION: string = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version
