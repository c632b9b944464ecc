/**
 * The last parameter of every async method that may wait (style §5). A neutral module: routing, store and
 * status all take it, and none of them may depend on another for a type this small.
 */
export interface AbortOptions {
  signal?: AbortSignal
}
