// The PLC directory for botsky's tests, in its own process, its data kept on disk.
//
// Usage: node plc.mjs <dataDir>   (env PLC_PORT)
// @did-plc/server's in-memory database, plus a journal: every accepted operation is appended
// to <dataDir>/plc-ops.jsonl and replayed (and validated again) on start, so a restarted PLC
// knows every DID it knew. Listens on 127.0.0.1 only; runs until SIGTERM or until its parent
// (the test process) is gone.
import { PlcServer, Database } from '@did-plc/server'
import fs from 'node:fs'
import path from 'node:path'
import readline from 'node:readline'

const dataDir = process.argv[2]
const port = Number(process.env.PLC_PORT)
const journal = path.join(dataDir, 'plc-ops.jsonl')

const db = Database.mock()
if (fs.existsSync(journal)) {
  const lines = readline.createInterface({ input: fs.createReadStream(journal) })
  for await (const line of lines) {
    if (!line.trim()) continue
    let entry
    try {
      entry = JSON.parse(line)
    } catch {
      continue // a line cut short by a kill while it was written: that op was never answered
    }
    await db.validateAndAddOp(entry.did, entry.op)
  }
}
const add = db.validateAndAddOp.bind(db)
db.validateAndAddOp = async (did, op) => {
  await add(did, op)
  fs.appendFileSync(journal, JSON.stringify({ did, op }) + '\n')
}

const plc = await PlcServer.create({ db, port })
const listen = plc.app.listen.bind(plc.app)
plc.app.listen = (p, ...rest) => listen(p, '127.0.0.1', ...rest.filter((a) => typeof a === 'function'))
await plc.start()
console.log(JSON.stringify({ plc: `http://localhost:${port}` }))

async function shutdown() {
  try {
    await plc.destroy()
  } finally {
    process.exit(0)
  }
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
const parent = process.ppid
setInterval(() => {
  if (process.ppid !== parent) shutdown()
}, 1000).unref()
