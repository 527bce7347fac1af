// The reference PDS for botsky's tests, restartable on the same data.
//
// Usage: node pds.mjs <dataDir>   (env PDS_PORT, PLC_URL, RATE_LIMITS=1|0, BYPASS_KEY)
// Its secrets (JWT secret, admin password, PLC rotation key) live in <dataDir>/secrets.json,
// made on the first start and read on every later one, so a restarted PDS is the same server:
// its sessions stay valid and it can still sign PLC operations. Accounts, repos and the
// sequencer are SQLite files under <dataDir>. With RATE_LIMITS=1 the PDS enforces its own
// limits (in memory: a restart forgets them); requests carrying the header
// x-ratelimit-bypass: <BYPASS_KEY> are not counted (the harness's own reads).
// Nothing here contacts a host off the machine: no AppView, no crawlers.
import { PDS, envToCfg, envToSecrets } from '@atproto/pds'
import { Secp256k1Keypair } from '@atproto/crypto'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'

const dataDir = process.argv[2]
const port = Number(process.env.PDS_PORT)

const secretsFile = path.join(dataDir, 'secrets.json')
if (!fs.existsSync(secretsFile)) {
  const rotationKey = await Secp256k1Keypair.create({ exportable: true })
  const made = {
    jwtSecret: crypto.randomBytes(16).toString('hex'),
    adminPassword: 'admin-pass',
    rotationKeyHex: Buffer.from(await rotationKey.export()).toString('hex'),
  }
  fs.writeFileSync(secretsFile + '.tmp', JSON.stringify(made))
  fs.renameSync(secretsFile + '.tmp', secretsFile)
}
const secrets = JSON.parse(fs.readFileSync(secretsFile, 'utf8'))

const env = {
  devMode: true,
  port,
  hostname: 'localhost',
  dataDirectory: dataDir,
  blobstoreDiskLocation: path.join(dataDir, 'blobs'),
  // The PDS fails DID resolution with an IP literal ("Invalid hostname"): the URL uses localhost.
  didPlcUrl: process.env.PLC_URL,
  serviceHandleDomains: ['.test'],
  inviteRequired: false,
  jwtSecret: secrets.jwtSecret,
  adminPassword: secrets.adminPassword,
  plcRotationKeyK256PrivateKeyHex: secrets.rotationKeyHex,
  rateLimitsEnabled: process.env.RATE_LIMITS === '1',
  rateLimitBypassKey: process.env.BYPASS_KEY || undefined,
  crawlers: [],
}
const pds = await PDS.create(envToCfg(env), envToSecrets(env))

// Listen on loopback only (the default is every interface).
const listen = pds.app.listen.bind(pds.app)
pds.app.listen = (p, ...rest) => listen(p, '127.0.0.1', ...rest.filter((a) => typeof a === 'function'))

// Count requests per XRPC method (since this process started) so tests can assert e.g. "no new
// createSession"; GET /_harness/counts answers them, outside the rate limits.
const counts = {}
const handle = pds.app.handle.bind(pds.app)
pds.app.handle = (req, res, next) => {
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

await pds.start()
console.log(JSON.stringify({ pds: `http://localhost:${port}` }))

async function shutdown() {
  try {
    await pds.destroy()
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
