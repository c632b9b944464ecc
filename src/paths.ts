/**
 * The checkout, or the image's /opt/kagami. This file sits one level below it, and so does every copy of
 * it that runs: `src/` (tsx), `dist/` (tsc) and the bundle (`dist/kagami*.mjs`, scripts/bundle.mjs), so
 * files found from here (package.json, proto/) are found from each.
 */
export const ROOT_URL = new URL('../', import.meta.url)
