// xsalsa20 1.2 (the cipher @libp2p/pnet uses) ships no types: what src/trust/pnet-cipher.ts touches.
declare module 'xsalsa20' {
  const XSalsa20: { prototype: object }
  export default XSalsa20
}
