import { routerConformance } from '../conformance/router.js'
import { kadDhtNetwork } from './kad-dht-fixture.js'

routerConformance(
  'kad-dht with key exchange (5 libp2p nodes on 127.0.0.1)',
  { nodes: 5, withdrawWithinMs: 5000 },
  (n) => kadDhtNetwork(n),
)

// The DHT path alone, as it serves peers beyond direct connections in large clusters.
routerConformance(
  'kad-dht, DHT lookups only (5 libp2p nodes on 127.0.0.1)',
  { nodes: 5, withdrawWithinMs: 5000 },
  (n) => kadDhtNetwork(n, { keyExchange: false }),
)
