// Helpers of the integration tests: the project's moto server, tables, a stand-in consumer and
// the real `livemigrate` CLI.
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";

import {
  CreateTableCommand,
  DescribeTableCommand,
  DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  ScanCommand,
  type AttributeValue,
} from "@aws-sdk/client-dynamodb";

export const ENDPOINT = process.env.AWS_ENDPOINT_URL ?? "http://127.0.0.1:4599";
const PACKAGE_DIR = fileURLToPath(new URL("../../", import.meta.url));
/** The livemigrate CLI: LIVEMIGRATE_CLI, else the project's virtualenv. */
export const CLI = process.env.LIVEMIGRATE_CLI ?? `${PACKAGE_DIR}../../.venv/bin/livemigrate`;

export function dynamo(): DynamoDBClient {
  return new DynamoDBClient({
    endpoint: ENDPOINT,
    region: "us-east-1",
    credentials: { accessKeyId: "testing", secretAccessKey: "testing" },
  });
}

export function unique(prefix: string): string {
  return `${prefix}-${randomUUID().replaceAll("-", "").slice(0, 10)}`;
}

export async function createTable(client: DynamoDBClient, name: string): Promise<void> {
  await client.send(
    new CreateTableCommand({
      TableName: name,
      KeySchema: [
        { AttributeName: "pk", KeyType: "HASH" },
        { AttributeName: "sk", KeyType: "RANGE" },
      ],
      AttributeDefinitions: [
        { AttributeName: "pk", AttributeType: "S" },
        { AttributeName: "sk", AttributeType: "S" },
      ],
      BillingMode: "PAY_PER_REQUEST",
    }),
  );
  for (let i = 0; i < 100; i++) {
    const table = await client.send(new DescribeTableCommand({ TableName: name }));
    if (table.Table?.TableStatus === "ACTIVE") return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export async function scanKeys(client: DynamoDBClient, table: string): Promise<Set<string>> {
  const keys = new Set<string>();
  let start: Record<string, AttributeValue> | undefined;
  do {
    const page = await client.send(
      new ScanCommand({ TableName: table, ConsistentRead: true, ExclusiveStartKey: start }),
    );
    for (const item of page.Items ?? []) keys.add(item.pk?.S ?? "");
    start = page.LastEvaluatedKey;
  } while (start);
  return keys;
}

export interface Migration {
  client: DynamoDBClient;
  controlTable: string;
  migrationId: string;
  source: string;
  destination: string;
}

function typed(values: Record<string, string | number | boolean>): Record<string, AttributeValue> {
  const out: Record<string, AttributeValue> = {};
  for (const [name, value] of Object.entries(values)) {
    if (typeof value === "string") out[name] = { S: value };
    else if (typeof value === "boolean") out[name] = { BOOL: value };
    else out[name] = { N: String(value) };
  }
  return out;
}

/** Put a control-table item of the migration (as livemigrate writes it: plain scalars). */
export async function putControl(
  m: Migration,
  sk: string,
  values: Record<string, string | number | boolean>,
): Promise<void> {
  await m.client.send(
    new PutItemCommand({
      TableName: m.controlTable,
      Item: { pk: { S: `MIG#${m.migrationId}` }, sk: { S: sk }, ...typed(values) },
    }),
  );
}

/** Source, destination and control tables of a migration whose every cutover gate is met
 * (as the engines would leave it: backfill complete, consumer caught up, verified). */
export async function readyMigration(): Promise<Migration> {
  const client = dynamo();
  const m: Migration = {
    client,
    controlTable: unique("control"),
    migrationId: unique("ts-mig"),
    source: unique("ts-src"),
    destination: unique("ts-dst"),
  };
  for (const table of [m.controlTable, m.source, m.destination]) await createTable(client, table);
  const now = Date.now() / 1000;
  await putControl(m, "META", { source_table: m.source, destination_table: m.destination });
  await putControl(m, "PLAN", { state: "complete", completed_at: now - 60 });
  await putControl(m, "CONSUMER#source", { heartbeat_at: now, lag_seconds: 0, records_behind: 0 });
  await putControl(m, "TOMBSTONES", { state: "purged", purged_at: now - 30 });
  await putControl(m, "VERIFY", {
    passed: true,
    at: now - 10,
    missing: 0,
    extra: 0,
    different: 0,
    tombstones: 0,
  });
  return m;
}

/**
 * A stand-in consumer: copies the source into the destination, then reports a heartbeat that
 * carries the time the copy pass STARTED (so "heartbeat after t" means every source write
 * before t is in the destination). It stops once the flag has flipped. The writers write each
 * key once, so each key is copied once (a pass stays short however long the test writes).
 */
export async function copier(m: Migration, stop: { stopped: boolean }): Promise<void> {
  const key = { pk: { S: `MIG#${m.migrationId}` } };
  const copied = new Set<string>();
  while (!stop.stopped) {
    const flag = await m.client.send(
      new GetItemCommand({
        TableName: m.controlTable,
        Key: { ...key, sk: { S: "FLAG" } },
        ConsistentRead: true,
      }),
    );
    if (flag.Item?.active?.S === "destination") return;
    const started = Date.now() / 1000;
    let start: Record<string, AttributeValue> | undefined;
    do {
      const page = await m.client.send(
        new ScanCommand({ TableName: m.source, ConsistentRead: true, ExclusiveStartKey: start }),
      );
      for (const item of page.Items ?? []) {
        const key = item.pk?.S ?? "";
        if (copied.has(key)) continue; // every key is written once: copy each once
        await m.client.send(new PutItemCommand({ TableName: m.destination, Item: item }));
        copied.add(key);
      }
      start = page.LastEvaluatedKey;
    } while (start);
    await putControl(m, "CONSUMER#source", {
      heartbeat_at: started,
      lag_seconds: 0,
      records_behind: 0,
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The environment the livemigrate CLI needs for this migration (moto, never AWS). */
export function cliEnv(m: Migration): NodeJS.ProcessEnv {
  const inherited = Object.entries(process.env).filter(([name]) => !name.startsWith("LIVEMIGRATE_"));
  return {
    ...Object.fromEntries(inherited),
    AWS_ENDPOINT_URL: ENDPOINT,
    AWS_REGION: "us-east-1",
    AWS_DEFAULT_REGION: "us-east-1",
    AWS_ACCESS_KEY_ID: "testing",
    AWS_SECRET_ACCESS_KEY: "testing",
    LIVEMIGRATE_CONFIG: `/nonexistent/${m.migrationId}.toml`,
    LIVEMIGRATE_MIGRATION_ID: m.migrationId,
    LIVEMIGRATE_SOURCE_TABLE: m.source,
    LIVEMIGRATE_DESTINATION_TABLE: m.destination,
    LIVEMIGRATE_CONTROL_TABLE: m.controlTable,
  };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `livemigrate <args>` to its end. */
export function livemigrate(m: Migration, args: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(CLI, args, { env: cliEnv(m) });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}
