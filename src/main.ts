// Entry point: the polyfill must evaluate before any libp2p module.
import './polyfill.js'
import { main } from './cli.js'

process.exitCode = await main(process.argv)
