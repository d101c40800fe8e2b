// A Node.js application writer for the cross-language end-to-end test
// (tests/integration/test_e2e_two_clients.py): checked puts of `<prefix>-<n>` until SIGTERM,
// one JSON line on stdout per acknowledged write, then a summary line.
//
// Environment: AWS_ENDPOINT_URL, LM_CONTROL_TABLE, LM_MIGRATION_ID, LM_PREFIX, LM_TTL.
import { LostRace } from "../src/index.js";
import { activeTable } from "../src/index.js";
import { dynamo } from "./support.js";

const env = process.env;
const active = activeTable({
  client: dynamo(),
  controlTable: env.LM_CONTROL_TABLE ?? "",
  migrationId: env.LM_MIGRATION_ID ?? "",
  ttl: Number(env.LM_TTL ?? "1"),
});
let stopping = false;
process.on("SIGTERM", () => (stopping = true));

let written = 0;
let lost = 0;
for (let n = 0; !stopping; n++) {
  const key = `${env.LM_PREFIX ?? "node"}-${String(n).padStart(5, "0")}`;
  try {
    const table = await active.put(() => ({ pk: { S: key }, sk: { S: "v" } }));
    written += 1;
    process.stdout.write(JSON.stringify({ key, table, at: Date.now() / 1000 }) + "\n");
  } catch (error) {
    if (!(error instanceof LostRace)) throw error;
    lost += 1; // nothing was written: not acknowledged
  }
  await new Promise((resolve) => setTimeout(resolve, 10));
}
process.stdout.write(JSON.stringify({ done: true, written, lost_races: lost }) + "\n");
