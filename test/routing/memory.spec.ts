import { memoryNetwork, memoryRouter } from '../../src/routing/memory.js'
import { routerConformance } from '../conformance/router.js'

routerConformance('memory', { nodes: 5, withdrawWithinMs: 0 }, async (n) => {
  const network = memoryNetwork()
  const urls = Array.from({ length: n }, (_, i) => `http://127.0.0.1:${40000 + i}`)
  const routers = urls.map((url, i) => memoryRouter({ network }, { id: `node-${i}`, url }))
  for (const r of routers) await r.start()
  return {
    routers,
    urls,
    stopNode: (i) => routers[i]!.stop(),
    teardown: async () => {
      for (const r of routers) await r.stop()
    },
  }
})
