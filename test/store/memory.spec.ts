import { readFile } from 'node:fs/promises'
import { MemoryStore } from '../../src/store/memory.js'
import { storeConformance } from '../conformance/store.js'

storeConformance('memory', async () => {
  const store = new MemoryStore()
  return {
    store,
    // Like a single-platform pull: the index, the amd64 manifest, its config and layers.
    async seed(image, name) {
      const amd64 = image.manifests.find((m) => m.platform === 'linux/amd64')!
      for (const d of [image.root, amd64.descriptor, amd64.config, ...amd64.layers]) {
        store.put(await readFile(image.blobs.get(d.digest)!.path), { mediaType: d.mediaType })
      }
      store.setImage(name, image.root)
    },
    async deleteImage(name) {
      store.deleteImage(name)
    },
    async startIngest(ref, partial, totalBytes, expected) {
      store.startIngest({ ref, expected, offsetBytes: 0, totalBytes })
      store.writeIngest(ref, partial)
    },
    async teardown() {
      await store.close()
    },
  }
})
