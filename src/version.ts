import { readFileSync } from 'node:fs'
import { ROOT_URL } from './paths.js'

/**
 * kagami's version, from package.json (the image copies it next to `dist/`). Read once, at import.
 */
export const VERSION: string = (
  JSON.parse(readFileSync(new URL('package.json', ROOT_URL), 'utf8')) as { version: string }
).version
