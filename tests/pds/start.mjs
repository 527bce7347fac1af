// Starts an in-memory PLC directory and the reference PDS on loopback for botsky's tests.
//
// Usage: node start.mjs <dataDir>   (env PLC_PORT, PDS_PORT)
// Prints one JSON line {"plc": url, "pds": url} once both answer, then runs until SIGTERM.
// Nothing here contacts a host off the machine: no AppView, no crawlers, PLC in memory.
import { PlcServer, Database } from '@did-plc/server'
import { PDS, envToCfg, envToSecrets } from '@atproto/pds'
import { Secp256k1Keypair } from '@atproto/crypto'
import crypto from 'node:crypto'
import path from 'node:path'

const dataDir = process.argv[2]
const plcPort = Number(process.env.PLC_PORT)
const pdsPort = Number(process.env.PDS_PORT)

// Both servers listen on every interface by default; pin them to loopback.
function loopbackOnly(app) {
  const listen = app.listen.bind(app)
  app.listen = (port, ...rest) => listen(port, '127.0.0.1', ...rest.filter((a) => typeof a === 'function'))
}

// Count requests per XRPC method so tests can assert e.g. "no new createSession".
const counts = {}
function counting(app) {
  const handle = app.handle.bind(app)
  app.handle = (req, res, next) => {
    const url = req.url || ''
    if (url === '/_harness/counts') {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify(counts))
      return
    }
    const m = url.match(/^\/xrpc\/([^?]+)/)
    if (m) counts[m[1]] = (counts[m[1]] || 0) + 1
    return handle(req, res, next)
  }
}

const plc = await PlcServer.create({ db: Database.mock(), port: plcPort })
loopbackOnly(plc.app)
await plc.start()
// The PDS fails DID resolution with an IP literal ("Invalid hostname"): use localhost.
const plcUrl = `http://localhost:${plcPort}`

const rotationKey = await Secp256k1Keypair.create({ exportable: true })
const env = {
  devMode: true,
  port: pdsPort,
  hostname: 'localhost',
  dataDirectory: dataDir,
  blobstoreDiskLocation: path.join(dataDir, 'blobs'),
  didPlcUrl: plcUrl,
  serviceHandleDomains: ['.test'],
  inviteRequired: false,
  jwtSecret: crypto.randomBytes(16).toString('hex'),
  adminPassword: 'admin-pass',
  plcRotationKeyK256PrivateKeyHex: Buffer.from(await rotationKey.export()).toString('hex'),
  rateLimitsEnabled: false,
  crawlers: [],
}
const pds = await PDS.create(envToCfg(env), envToSecrets(env))
loopbackOnly(pds.app)
counting(pds.app)
await pds.start()

console.log(JSON.stringify({ plc: plcUrl, pds: `http://localhost:${pdsPort}` }))

async function shutdown() {
  try {
    await pds.destroy()
    await plc.destroy()
  } finally {
    process.exit(0)
  }
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
// If the test process dies without stopping us (SIGKILL, a crash), do not linger.
const parent = process.ppid
setInterval(() => {
  if (process.ppid !== parent) shutdown()
}, 1000).unref()
