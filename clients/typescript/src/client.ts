import { DynamoDBClient, TransactWriteItemsCommand } from "@aws-sdk/client-dynamodb";
import type {
  AttributeValue,
  ConditionCheck,
  Delete,
  Put,
  TransactWriteItem,
  Update,
} from "@aws-sdk/client-dynamodb";

import { type Clock, systemClock } from "./clock.js";
import { type Flag, isFenced } from "./flag.js";
import { ControlFlagStore, type FlagStore } from "./store.js";

/** A writer waited longer than its `maxWait` for a fenced cutover to finish. */
export class FenceTimeout extends Error {
  override name = "FenceTimeout";
}

/** The flag changed under every attempt of a checked write; nothing was written. Retryable. */
export class LostRace extends Error {
  override name = "LostRace";
}

/** One of DynamoDB's cancellation reasons (`Code` "None" for an entry that did not fail). */
export interface CancellationReason {
  Code?: string;
  Message?: string;
  Item?: Record<string, unknown>;
}

/**
 * The application's own condition in a checked write failed; nothing was written. `reasons`
 * are DynamoDB's cancellation reasons for the application's writes (the flag check, always
 * last, is left out).
 */
export class WriteRejected extends Error {
  override name = "WriteRejected";
  readonly reasons: CancellationReason[];

  constructor(message: string, reasons: CancellationReason[]) {
    super(message);
    this.reasons = reasons;
  }
}

/** The checked write's store cannot be checked by a transaction (not the control table). */
export class NotCheckable extends Error {
  override name = "NotCheckable";
}

/** One TransactWriteItems entry (`Put`, `Delete`, `Update` or `ConditionCheck`); the client
 * fills in `TableName` where it is missing. */
export type WriteEntry =
  | { Put: WithoutTable<Put> }
  | { Delete: WithoutTable<Delete> }
  | { Update: WithoutTable<Update> }
  | { ConditionCheck: WithoutTable<ConditionCheck> };

/** An SDK entry type whose `TableName` may be left out. */
export type WithoutTable<T extends { TableName: string | undefined }> = Omit<T, "TableName"> & {
  TableName?: string;
};

/** A typed item or key, as the SDK takes it. */
export type TypedItem = Record<string, AttributeValue>;

/** Builds a checked write's entries for the table the flag names (item shapes may differ). */
export type Builder = (table: string) => WriteEntry[] | Promise<WriteEntry[]>;

/** Options of {@link ActiveTable}; the defaults are the Python client's. */
export interface ActiveTableOptions {
  /** Seconds a read flag is trusted before it is read again (default 1). */
  ttl?: number;
  /** Seconds between flag reads while a writer waits out a fence (default 0.05). */
  poll?: number;
  /** The longest a writer waits for a fence, in seconds (default 60; then FenceTimeout). */
  maxWait?: number;
  /** Attempts of one checked write against a changing flag before LostRace (default 5). */
  maxRaces?: number;
  /** Injectable time (tests). */
  clock?: Clock;
  /** The client checked writes are sent with (default: the control table store's). */
  client?: Pick<DynamoDBClient, "send">;
}

/** How a failed transaction is handled (docs/flag-protocol.md, "Errors"). */
export type Failure = "flag_moved" | "rejected" | "other";

/** Classify a TransactWriteItems failure of a checked write with `writes` application entries. */
export function classifyFailure(
  code: string | undefined,
  reasons: CancellationReason[],
  writes: number,
): Failure {
  if (code !== "TransactionCanceledException") return "other";
  if (reasons.length > writes && reasons[writes]?.Code === "ConditionalCheckFailed") {
    return "flag_moved";
  }
  return "rejected";
}

function withTable(entry: WriteEntry, table: string): TransactWriteItem {
  const parts = Object.entries(entry).filter(([, body]) => body !== undefined);
  if (parts.length !== 1) {
    const kinds = parts.map(([kind]) => kind).join(", ");
    throw new TypeError(`a write entry has exactly one kind (Put, Delete, ...), not: ${kinds}`);
  }
  const [kind, body] = parts[0] as [string, object];
  return { [kind]: { TableName: table, ...body } } as TransactWriteItem;
}

function failureOf(error: unknown): { code?: string; reasons: CancellationReason[] } {
  const failed = error as { name?: string; CancellationReasons?: CancellationReason[] };
  return { code: failed?.name, reasons: failed?.CancellationReasons ?? [] };
}

/** Which table to use, read from the flag store with a short cache. */
export class ActiveTable {
  readonly store: FlagStore;
  readonly ttl: number;
  readonly poll: number;
  readonly maxWait: number;
  readonly maxRaces: number;
  readonly clock: Clock;
  readonly client: Pick<DynamoDBClient, "send"> | undefined;
  /** Flag-store reads, for tests and metrics. */
  reads = 0;
  /** Checked writes cancelled by a flag change, for tests and metrics. */
  races = 0;
  private cached: Flag | undefined;
  private readAt = -Infinity;
  private pending: Promise<Flag> | undefined;

  constructor(store: FlagStore, options: ActiveTableOptions = {}) {
    this.store = store;
    this.ttl = options.ttl ?? 1.0;
    this.poll = options.poll ?? 0.05;
    this.maxWait = options.maxWait ?? 60.0;
    this.maxRaces = options.maxRaces ?? 5;
    this.clock = options.clock ?? systemClock;
    this.client =
      options.client ?? (store instanceof ControlFlagStore ? store.client : undefined);
  }

  /** The flag, from cache unless it is older than `ttl` (or `fresh` is asked). */
  async flag(options: { fresh?: boolean } = {}): Promise<Flag> {
    const now = this.clock.now();
    if (!options.fresh && this.cached !== undefined && now - this.readAt < this.ttl) {
      return this.cached;
    }
    // Callers that find the cache stale together share one read; a fresh read never reuses
    // a read that was sent before it was asked for.
    if (!options.fresh && this.pending !== undefined) return this.pending;
    const read = this.read(now);
    this.pending = read;
    try {
      return await read;
    } finally {
      if (this.pending === read) this.pending = undefined;
    }
  }

  private async read(now: number): Promise<Flag> {
    const flag = await this.store.read();
    this.reads += 1;
    if (now >= this.readAt) {
      this.cached = flag;
      this.readAt = now;
    }
    return flag;
  }

  /** The name of the table applications should use now (at most `ttl` stale). */
  async activeTable(): Promise<string> {
    return (await this.flag()).table;
  }

  /** The flag once no fence holds writers (polling every `poll`, up to `maxWait`). */
  private async unfencedFlag(fresh = false): Promise<Flag> {
    let flag = await this.flag({ fresh });
    const started = this.clock.now();
    while (isFenced(flag, this.clock.now())) {
      if (this.clock.now() - started > this.maxWait) {
        throw new FenceTimeout(
          `waited ${this.maxWait.toFixed(1)}s for the fenced cutover of ${flag.table}`,
        );
      }
      await this.clock.sleep(this.poll);
      flag = await this.flag({ fresh: true });
    }
    return flag;
  }

  /** The table to write to, after waiting out a fenced cutover if one is in progress. */
  async tableForWrite(): Promise<string> {
    return (await this.unfencedFlag()).table;
  }

  /**
   * Run `fn(table)` against the active table, honouring a fence; returns its result. Not
   * checked when it lands (a write already on its way when a fence begins is not stopped):
   * prefer the checked writes.
   */
  async write<T>(fn: (table: string) => T | Promise<T>): Promise<T> {
    return fn(await this.tableForWrite());
  }

  /**
   * Write `build(table)` (TransactWriteItems entries, at most 99, `TableName` filled in where
   * missing) so that it lands only while the flag names `table`; resolves to that table.
   *
   * Rejects with LostRace (the flag changed under each of `maxRaces` attempts: retry later),
   * WriteRejected (a condition of the application's own failed), FenceTimeout, NotCheckable,
   * or the SDK's own error for anything else.
   */
  async transact(build: Builder): Promise<string> {
    const { store, client } = this.checkedParts();
    let fresh = false;
    for (let attempt = 0; attempt < this.maxRaces; attempt++) {
      const flag = await this.unfencedFlag(fresh);
      const entries = (await build(flag.table)).map((entry) => withTable(entry, flag.table));
      const check: TransactWriteItem = store.conditionCheck(flag);
      try {
        await client.send(new TransactWriteItemsCommand({ TransactItems: [...entries, check] }));
      } catch (error) {
        const { code, reasons } = failureOf(error);
        const failure = classifyFailure(code, reasons, entries.length);
        if (failure === "other") throw error;
        if (failure === "rejected") throw rejected(reasons.slice(0, entries.length));
        this.races += 1;
        fresh = true; // the cached flag is stale: read it again before retrying
        continue;
      }
      return flag.table;
    }
    throw new LostRace(
      `the active-table flag changed under ${this.maxRaces} attempts of one write (a cutover ` +
        "or rollback is running); nothing was written: retry the write",
    );
  }

  /** Checked PutItem of `itemFor(table)` (a typed item); `options` go into the Put. */
  async put(
    itemFor: (table: string) => TypedItem,
    options: Omit<Put, "Item" | "TableName"> = {},
  ): Promise<string> {
    return this.transact((table) => [{ Put: { Item: itemFor(table), ...options } }]);
  }

  /** Checked DeleteItem of `keyFor(table)` (a typed key); `options` go into the Delete. */
  async delete(
    keyFor: (table: string) => TypedItem,
    options: Omit<Delete, "Key" | "TableName"> = {},
  ): Promise<string> {
    return this.transact((table) => [{ Delete: { Key: keyFor(table), ...options } }]);
  }

  /** Checked UpdateItem: `paramsFor(table)` gives Key, UpdateExpression and the rest. */
  async update(paramsFor: (table: string) => WithoutTable<Update>): Promise<string> {
    return this.transact((table) => [{ Update: paramsFor(table) }]);
  }

  private checkedParts(): {
    store: Required<Pick<FlagStore, "conditionCheck">>;
    client: Pick<DynamoDBClient, "send">;
  } {
    const store = this.store;
    if (store.conditionCheck === undefined || this.client === undefined) {
      throw new NotCheckable(
        "checked writes need the flag in the control table (a DynamoDB transaction checks " +
          "its epoch); this flag store cannot be checked: use ControlFlagStore, or write()",
      );
    }
    return { store: { conditionCheck: store.conditionCheck.bind(store) }, client: this.client };
  }
}

function rejected(reasons: CancellationReason[]): WriteRejected {
  const failed = reasons.map((r) => r.Code).filter((code) => code && code !== "None");
  return new WriteRejected(`the write was refused by DynamoDB: ${failed.join(", ")}`, reasons);
}

/** Options of {@link activeTable}. */
export interface ControlTableOptions extends ActiveTableOptions {
  client: DynamoDBClient;
  /** The control table (livemigrate's default: `livemigrate-control`). */
  controlTable?: string;
  migrationId: string;
  sourceTable?: string;
  destinationTable?: string;
}

/** The common case: the flag lives in the control table. */
export function activeTable(options: ControlTableOptions): ActiveTable {
  const store = new ControlFlagStore({
    client: options.client,
    controlTable: options.controlTable ?? "livemigrate-control",
    migrationId: options.migrationId,
    sourceTable: options.sourceTable,
    destinationTable: options.destinationTable,
  });
  return new ActiveTable(store, options);
}
