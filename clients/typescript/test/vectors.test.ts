// The shared test vectors (docs/flag-vectors.json), driven through the real ActiveTable with a
// scripted clock, flag store and DynamoDB client. The Python client runs the same file
// (tests/unit/test_flag_vectors.py).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";

import { type DynamoDBClient, TransactionCanceledException } from "@aws-sdk/client-dynamodb";

import {
  ActiveTable,
  type CancellationReason,
  type Clock,
  classifyFailure,
  conditionCheck,
  type Flag,
  type FlagStore,
  initialFlag,
  isFenced,
  parseFlag,
  WriteRejected,
} from "../src/index.js";

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const vectorsUrl = new URL("../../../../docs/flag-vectors.json", import.meta.url);
const vectors: Json = JSON.parse(readFileSync(vectorsUrl, "utf8"));
const runner: Json = vectors.runner;
const tables: { source: string; destination: string } = runner.tables;

class ScriptedClock implements Clock {
  constructor(public current: number) {}
  now(): number {
    return this.current;
  }
  async sleep(seconds: number): Promise<void> {
    this.current += Math.max(0, seconds);
  }
  moveTo(at: number): void {
    if (at > this.current) this.current += at - this.current;
  }
}

class TimelineStore implements FlagStore {
  reads = 0;
  constructor(
    private readonly timeline: { at: number; flag: Json | null }[],
    private readonly clock: ScriptedClock,
  ) {}
  item(): Json | null {
    let item: Json | null = null;
    for (const entry of this.timeline) if (entry.at <= this.clock.now()) item = entry.flag;
    return item;
  }
  async read(): Promise<Flag> {
    this.reads += 1;
    const item = this.item();
    return item === null ? initialFlag(tables.source, tables.destination) : parseFlag(item);
  }
}

class CheckableStore extends TimelineStore {
  conditionCheck(flag: Flag) {
    return conditionCheck(flag, runner.control_table, runner.migration_id);
  }
}

class ScriptedDynamo {
  attempts: Json[] = [];
  script: Json[] = [];
  constructor(
    private readonly clock: ScriptedClock,
    private readonly store: TimelineStore,
  ) {}
  async send(command: { input: { TransactItems: Json[] } }): Promise<unknown> {
    const items = command.input.TransactItems;
    const check = items[items.length - 1].ConditionCheck;
    const app = items[0];
    const table: string = (Object.values(app)[0] as Json).TableName;
    const epoch = Number(check.ExpressionAttributeValues[":epoch"].N);
    const plan: Json = this.script[this.attempts.length] ?? {};
    const attempt: Json = { table, epoch, outcome: "ok" };
    this.attempts.push(attempt);
    this.clock.current += plan.latency ?? 0;
    if (plan.error) {
      attempt.outcome = "error";
      throw Object.assign(new Error(plan.error), { name: plan.error });
    }
    const held = this.store.item();
    const flagHolds =
      held === null
        ? check.ConditionExpression === "attribute_not_exists(#epoch) OR #epoch = :epoch"
        : Number(held.epoch) === epoch;
    const appHolds = plan.app_condition !== "fails";
    if (flagHolds && appHolds) return {};
    attempt.outcome = flagHolds ? "rejected" : "flag_moved";
    const code = (holds: boolean) => ({ Code: holds ? "None" : "ConditionalCheckFailed" });
    throw new TransactionCanceledException({
      message: "Transaction cancelled",
      $metadata: {},
      CancellationReasons: [code(appHolds), code(flagHolds)],
    });
  }
}

function errorName(error: unknown): string {
  const name = (error as Error).name;
  return ["FenceTimeout", "LostRace", "WriteRejected", "NotCheckable"].includes(name)
    ? name
    : "Other";
}

async function runStep(active: ActiveTable, step: Json): Promise<Json> {
  const call: () => Promise<string> = {
    active_table: () => active.activeTable(),
    table_for_write: () => active.tableForWrite(),
    checked_write: () =>
      active.put(() => ({ pk: { S: "k" }, sk: { S: "v" } }), {
        ConditionExpression: "attribute_not_exists(pk)",
      }),
  }[step.call as string] as () => Promise<string>;
  try {
    return { table: await call() };
  } catch (error) {
    const out: Json = { error: errorName(error) };
    if (out.error === "Other") out.code = (error as Error).name;
    if (error instanceof WriteRejected) {
      out.rejected_codes = error.reasons.map((r) => r.Code).filter((c) => c && c !== "None");
    }
    return out;
  }
}

describe("flag items", () => {
  for (const vector of vectors.flag_items) {
    it(vector.name, () => assert.deepEqual(parseFlag(vector.item), vector.expect));
  }
});

describe("fence", () => {
  for (const vector of vectors.fence) {
    it(vector.name, () => assert.equal(isFenced(parseFlag(vector.flag), vector.now), vector.fenced));
  }
});

describe("condition check", () => {
  for (const vector of vectors.condition_check) {
    it(vector.name, () => {
      const flag = { ...initialFlag(tables.source, tables.destination), epoch: vector.epoch };
      assert.deepEqual(conditionCheck(flag, runner.control_table, runner.migration_id), vector.expect);
    });
  }
});

describe("cancellation", () => {
  for (const vector of vectors.cancellation) {
    it(vector.name, () => {
      const reasons: CancellationReason[] = vector.reasons;
      assert.equal(classifyFailure(vector.code, reasons, vector.writes), vector.expect);
    });
  }
});

describe("scenarios", () => {
  for (const scenario of vectors.scenarios) {
    it(scenario.name, async () => {
      const settings = { ...runner.defaults, ...(scenario.client ?? {}) };
      const clock = new ScriptedClock(scenario.start ?? settings.start);
      const Store = scenario.checkable === false ? TimelineStore : CheckableStore;
      const store = new Store(scenario.timeline, clock);
      const dynamo = new ScriptedDynamo(clock, store);
      const active = new ActiveTable(store, {
        ttl: settings.ttl,
        poll: settings.poll,
        maxWait: settings.max_wait,
        maxRaces: settings.max_races,
        clock,
        client: dynamo as unknown as Pick<DynamoDBClient, "send">,
      });
      for (const [index, step] of scenario.steps.entries()) {
        dynamo.script = step.attempts ?? [];
        dynamo.attempts = [];
        clock.moveTo(step.at);
        const got = await runStep(active, step);
        const expect: Json = step.expect;
        const what = `${scenario.name}, step ${index}`;
        for (const field of ["table", "error", "code", "rejected_codes"]) {
          if (field in expect || field in got) assert.deepEqual(got[field], expect[field], what);
        }
        assert.equal(store.reads, expect.reads, `${what}: reads`);
        if ("races" in expect) assert.equal(active.races, expect.races, `${what}: races`);
        if ("attempts" in expect) assert.deepEqual(dynamo.attempts, expect.attempts, what);
        if ("now" in expect) assert.ok(Math.abs(clock.now() - expect.now) < 1e-6, `${what}: now`);
      }
    });
  }
});

// Beyond the fixed vectors: seeded random timelines (the Python side uses hypothesis).
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

describe("any timeline", () => {
  it("a checked write lands only where the flag points when it lands", async () => {
    for (let seed = 1; seed <= 300; seed++) {
      const next = random(seed);
      const start = 1000.0;
      const timeline: { at: number; flag: Json | null }[] = [{ at: 0, flag: null }];
      let at = start;
      const versions = Math.floor(next() * 9);
      for (let epoch = 1; epoch <= versions; epoch++) {
        at += 0.01 + next() * 0.49;
        const side = next() < 0.5 ? "source" : "destination";
        const table = side === "destination" ? tables.destination : tables.source;
        const fenced = next() < 0.5;
        timeline.push({ at, flag: { active: side, table, epoch, fenced, fenced_until: at + next() } });
      }
      const clock = new ScriptedClock(start);
      const store = new CheckableStore(timeline, clock);
      const dynamo = new ScriptedDynamo(clock, store);
      dynamo.script = Array.from({ length: Math.floor(next() * 7) }, () => ({ latency: next() * 0.4 }));
      const ttl = [0, 0.3, 1][Math.floor(next() * 3)] as number;
      const active = new ActiveTable(store, {
        ttl,
        maxRaces: 6,
        clock,
        client: dynamo as unknown as Pick<DynamoDBClient, "send">,
      });
      if (next() < 0.5) await active.activeTable(); // a flag cached before the write
      clock.current += next() * 2;
      const got = await runStep(active, { call: "checked_write" });
      const landed = dynamo.attempts.filter((a) => a.outcome === "ok");
      const what = `seed ${seed}`;
      if (!("table" in got)) {
        assert.equal(got.error, "LostRace", what);
        assert.equal(landed.length, 0, what);
        continue;
      }
      const held = await store.read(); // the flag in effect when the write landed
      assert.deepEqual(landed, [{ table: got.table, epoch: held.epoch, outcome: "ok" }], what);
      assert.equal(got.table, held.table, what);
      assert.equal(isFenced(held, clock.now()), false, what);
    }
  });
});
