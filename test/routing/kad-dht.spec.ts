import { routerConformance } from '../conformance/router.js'
import { kadDhtNetwork } from './kad-dht-fixture.js'

routerConformance('kad-dht (5 libp2p nodes on 127.0.0.1)', { nodes: 5, withdrawWithinMs: 5000 }, (n) =>
  kadDhtNetwork(n),
)
