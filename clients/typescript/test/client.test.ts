// What the shared vectors do not cover: TypeScript-side details of the client.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import type { DynamoDBClient } from "@aws-sdk/client-dynamodb";

import {
  ActiveTable,
  type Clock,
  conditionCheck,
  type Flag,
  type FlagStore,
  initialFlag,
  plainItem,
} from "../src/index.js";

const clock: Clock = { now: () => 1000, sleep: async () => undefined };

class CountingStore implements FlagStore {
  reads = 0;
  async read(): Promise<Flag> {
    this.reads += 1;
    await new Promise((resolve) => setTimeout(resolve, 5));
    return initialFlag("orders", "orders_v2");
  }
  conditionCheck(flag: Flag) {
    return conditionCheck(flag, "livemigrate-control", "m");
  }
}

describe("client details", () => {
  it("callers that find the cache stale together share one read", async () => {
    const store = new CountingStore();
    const active = new ActiveTable(store, { clock });
    const tables = await Promise.all([1, 2, 3].map(() => active.activeTable()));
    assert.deepEqual(tables, ["orders", "orders", "orders"]);
    assert.equal(store.reads, 1);
  });

  it("fills in TableName where the application gave none, and keeps one it gave", async () => {
    const sent: unknown[] = [];
    const client = { send: async (command: { input: unknown }) => sent.push(command.input) };
    const active = new ActiveTable(new CountingStore(), {
      clock,
      client: client as unknown as Pick<DynamoDBClient, "send">,
    });
    await active.transact(() => [
      { Put: { Item: { pk: { S: "a" } } } },
      { ConditionCheck: { TableName: "limits", Key: {}, ConditionExpression: "x" } },
    ]);
    const input = sent[0] as { TransactItems: Record<string, { TableName: string }>[] };
    const names = input.TransactItems.map((entry) => Object.values(entry)[0]?.TableName);
    assert.deepEqual(names, ["orders", "limits", "livemigrate-control"]);
  });

  it("reads a typed FLAG item as plain values", () => {
    const item = { table: { S: "orders" }, epoch: { N: "3" }, fenced: { BOOL: true }, x: { NULL: true } };
    assert.deepEqual(plainItem(item), { table: "orders", epoch: 3, fenced: true, x: null });
  });
});
