// The TypeScript client against the project's moto server (AWS_ENDPOINT_URL): real reads and
// transactions, and a fenced cutover run by the real `livemigrate cutover --fenced` CLI while
// Node.js writers write.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { PutItemCommand, UpdateItemCommand } from "@aws-sdk/client-dynamodb";

import { ActiveTable, activeTable, type Clock, LostRace, WriteRejected } from "../src/index.js";
import {
  copier,
  livemigrate,
  type Migration,
  putControl,
  readyMigration,
  scanKeys,
} from "./support.js";

function clientFor(m: Migration, ttl: number): ActiveTable {
  return activeTable({
    client: m.client,
    controlTable: m.controlTable,
    migrationId: m.migrationId,
    ttl,
  });
}

/** Change the flag the way livemigrate does: one write conditioned on the epoch, epoch + 1. */
async function setFlag(m: Migration, table: string, epoch: number): Promise<void> {
  const active = table === m.destination ? "destination" : "source";
  await m.client.send(
    new UpdateItemCommand({
      TableName: m.controlTable,
      Key: { pk: { S: `MIG#${m.migrationId}` }, sk: { S: "FLAG" } },
      UpdateExpression: "SET #active = :active, #table = :table, #epoch = :epoch",
      ConditionExpression: "attribute_not_exists(#epoch) OR #epoch = :previous",
      ExpressionAttributeNames: { "#active": "active", "#table": "table", "#epoch": "epoch" },
      ExpressionAttributeValues: {
        ":active": { S: active },
        ":table": { S: table },
        ":epoch": { N: String(epoch) },
        ":previous": { N: String(epoch - 1) },
      },
    }),
  );
}

class ManualClock implements Clock {
  current = 1_000_000;
  now(): number {
    return this.current;
  }
  async sleep(seconds: number): Promise<void> {
    this.current += seconds;
  }
}

const item = (key: string) => () => ({ pk: { S: key }, sk: { S: "v" } });

describe("against moto", () => {
  it("reads the initial flag from META and the flag at most once per ttl", async () => {
    const m = await readyMigration();
    const clock = new ManualClock();
    const active = new ActiveTable(clientFor(m, 1).store, { ttl: 1, clock });
    assert.equal(await active.activeTable(), m.source);
    await setFlag(m, m.destination, 1);
    clock.current += 0.99;
    for (let i = 0; i < 5; i++) assert.equal(await active.activeTable(), m.source); // cached
    assert.equal(active.reads, 1);
    clock.current += 0.01;
    assert.equal(await active.activeTable(), m.destination);
    assert.equal(active.reads, 2);
  });

  it("a checked write with a stale flag is cancelled by DynamoDB and lands on the new table", async () => {
    const m = await readyMigration();
    const active = clientFor(m, 60);
    assert.equal(await active.put(item("first")), m.source); // epoch 0: no FLAG item
    await setFlag(m, m.destination, 1); // the cached flag (epoch 0) is now stale
    assert.equal(await active.put(item("second")), m.destination);
    assert.equal(active.races, 1);
    assert.deepEqual([...(await scanKeys(m.client, m.source))], ["first"]);
    assert.deepEqual([...(await scanKeys(m.client, m.destination))], ["second"]);
  });

  it("the application's own condition failing is WriteRejected, with DynamoDB's reasons", async () => {
    const m = await readyMigration();
    const active = clientFor(m, 60);
    await m.client.send(new PutItemCommand({ TableName: m.source, Item: item("taken")() }));
    await assert.rejects(
      active.put(item("taken"), { ConditionExpression: "attribute_not_exists(pk)" }),
      (error: unknown) =>
        error instanceof WriteRejected && error.reasons[0]?.Code === "ConditionalCheckFailed",
    );
    assert.equal(active.races, 0);
  });

  it("a flag that moves under every attempt is LostRace, and nothing is written", async () => {
    const m = await readyMigration();
    const active = new ActiveTable(clientFor(m, 60).store, { maxRaces: 2 });
    let epoch = 0;
    const moving = async (_table: string) => {
      epoch += 1;
      await setFlag(m, m.source, epoch); // between the read and the transaction
      return [{ Put: { Item: item(`k${epoch}`)() } }];
    };
    await assert.rejects(active.transact(moving), LostRace);
    assert.equal((await scanKeys(m.client, m.source)).size, 0);
  });
});

interface Ack {
  key: string;
  table: string;
  begun: number;
  ended: number;
}

async function writer(active: ActiveTable, name: string, acks: Ack[], stop: { stopped: boolean }) {
  for (let i = 0; !stop.stopped; i++) {
    const key = `${name}-${String(i).padStart(5, "0")}`;
    const begun = Date.now() / 1000;
    const table = await active.put(item(key));
    acks.push({ key, table, begun, ended: Date.now() / 1000 });
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("a fenced cutover by the livemigrate CLI", () => {
  it("pauses the Node.js writers and loses no acknowledged write", async () => {
    const m = await readyMigration();
    await putControl(m, "CONSUMER#source", {
      heartbeat_at: Date.now() / 1000,
      lag_seconds: 0,
      records_behind: 0,
    });
    const stop = { stopped: false };
    const copying = { stopped: false };
    const acks: Ack[] = [];
    const copy = copier(m, copying);
    const writers = [0, 1, 2].map((n) => writer(clientFor(m, 0.2), `ts${n}`, acks, stop));
    let result;
    try {
      await new Promise((resolve) => setTimeout(resolve, 500));
      result = await livemigrate(m, [
        "cutover",
        "--fenced",
        "--checked-writes",
        "--json",
        "--client-ttl",
        "0.2",
        "--consumer-margin",
        "0.3",
        "--fence-seconds",
        "40",
        "--drain-timeout",
        "30",
      ]);
      // The CLI may return right at the flip: keep writing well past flip + 1 s, where the
      // writes checked below begin.
      await new Promise((resolve) => setTimeout(resolve, 2500));
    } finally {
      stop.stopped = true;
      copying.stopped = true;
      await Promise.all([...writers, copy]);
    }
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const summary = JSON.parse(result.stdout);
    const pause: number = summary.write_pause_seconds;
    const flippedAt: number = summary.flag.flipped_at === null ? 0 : Date.parse(summary.flag.flipped_at) / 1000;
    assert.ok(pause > 0 && pause < 30, `write pause ${pause}`);
    // The writers' own view of the pause: the longest gap between two acknowledged writes.
    const ends = acks.map((a) => a.ended).sort((a, b) => a - b);
    const gap = Math.max(...ends.slice(1).map((end, i) => end - (ends[i] as number)));
    console.log(`write pause (fence to flip) ${pause.toFixed(3)}s; longest writer gap ${gap.toFixed(3)}s; ${acks.length} acknowledged writes`);
    assert.ok(acks.some((a) => a.table === m.source), "no write before the cutover");
    // A checked write begun after the fence never lands on the source (the fence moved the epoch).
    const fencedAt = Date.parse(summary.flag.fenced_at) / 1000;
    assert.ok(Number.isFinite(fencedAt), `fenced_at: ${summary.flag.fenced_at}`);
    const late = acks.filter((a) => a.begun > fencedAt + 0.05 && a.table === m.source);
    assert.deepEqual(late, [], "writes begun after the fence landed on the source");
    const after = acks.filter((a) => a.begun > flippedAt + 1);
    assert.ok(after.length > 0 && after.every((a) => a.table === m.destination));
    const inDestination = await scanKeys(m.client, m.destination);
    const lost = acks.filter((a) => !inDestination.has(a.key)).map((a) => a.key);
    assert.deepEqual(lost, [], "acknowledged writes missing from the destination");
  });
});
