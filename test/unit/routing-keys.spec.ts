import { describe, expect, it } from 'vitest'
import { keyHash } from '../../src/routing/key-exchange.js'
import { isKeyString, MAX_KEY_LENGTH } from '../../src/routing/keys.js'

const digest = `sha256:${'ab'.repeat(32)}`

describe('isKeyString: every key a peer sends is checked', () => {
  it.each([
    [digest, true],
    ['docker.io/library/alpine:3.19', true],
    ['127.0.0.1:5000/team/app:v1', true],
    ['[::1]:5000/app:latest', true],
    ['registry.example.com/a/b/c:1.0-rc_1', true],
    [`sha256:${'AB'.repeat(32)}`, false], // upper-case hex
    [`sha256:${'ab'.repeat(31)}`, false], // short
    [`sha512:${'ab'.repeat(64)}`, false],
    ['alpine:3.19', false], // no registry
    ['docker.io/Library/alpine:3.19', false], // upper-case repository
    ['docker.io/library/alpine', false], // no tag
    ['docker.io/library/alpine:', false],
    ['docker.io/library/alpine:-bad', false],
    ['docker.io/library/alpine:3.19\n', false],
    ['not a key', false],
    ['', false],
    [`docker.io/${'a'.repeat(300)}:v1`, false], // repository over 255
    [`docker.io/library/alpine:${'t'.repeat(129)}`, false], // tag over 128
  ])('%s → %s', (key, ok) => {
    expect(isKeyString(key)).toBe(ok)
  })

  it('nothing longer than MAX_KEY_LENGTH passes', () => {
    expect(isKeyString(`r.io/${'a'.repeat(MAX_KEY_LENGTH)}:v`)).toBe(false)
  })
})

describe('keyHash: 48 bits, exact as a double', () => {
  it('takes a digest key from its hex, hashes a tag key, never above 2^48', () => {
    expect(keyHash(digest)).toBe(parseInt('ab'.repeat(6), 16))
    const h = keyHash('docker.io/library/alpine:3.19')
    expect(Number.isSafeInteger(h) && h >= 0 && h < 2 ** 48).toBe(true)
    expect(keyHash('docker.io/library/alpine:3.19')).toBe(h)
    expect(keyHash('docker.io/library/alpine:3.20')).not.toBe(h)
  })
})
