import { DynamoDBClient, GetItemCommand } from "@aws-sdk/client-dynamodb";

import { type Clock, systemClock } from "./clock.js";
import {
  type ConditionCheckEntry,
  conditionCheck,
  type Flag,
  FLAG_SK,
  initialFlag,
  parseFlag,
  plainItem,
} from "./flag.js";

/** Where the flag lives. A store whose epoch a transaction can check also has `conditionCheck`. */
export interface FlagStore {
  /** The current flag (the initial one, epoch 0, if nothing was written yet). */
  read(): Promise<Flag>;
  /** The ConditionCheck entry that holds only while the flag is still `flag`'s epoch. */
  conditionCheck?(flag: Flag): ConditionCheckEntry;
}

/** Options of {@link ControlFlagStore}. */
export interface ControlFlagStoreOptions {
  client: DynamoDBClient;
  /** The control table (livemigrate's default: `livemigrate-control`). */
  controlTable: string;
  migrationId: string;
  /** Table names for the initial flag; read from the migration's META item when omitted. */
  sourceTable?: string;
  destinationTable?: string;
  clock?: Clock;
}

const TORN_READS = 20;

/** The flag as the FLAG item of the migration in the control table (read consistently). */
export class ControlFlagStore implements FlagStore {
  readonly client: DynamoDBClient;
  readonly controlTable: string;
  readonly migrationId: string;
  private sourceTable: string;
  private destinationTable: string;
  private readonly clock: Clock;

  constructor(options: ControlFlagStoreOptions) {
    this.client = options.client;
    this.controlTable = options.controlTable;
    this.migrationId = options.migrationId;
    this.sourceTable = options.sourceTable ?? "";
    this.destinationTable = options.destinationTable ?? "";
    this.clock = options.clock ?? systemClock;
  }

  private async get(sk: string): Promise<Record<string, unknown> | undefined> {
    const response = await this.client.send(
      new GetItemCommand({
        TableName: this.controlTable,
        Key: { pk: { S: `MIG#${this.migrationId}` }, sk: { S: sk } },
        ConsistentRead: true,
      }),
    );
    return response.Item === undefined ? undefined : plainItem(response.Item);
  }

  private async initial(): Promise<Flag> {
    if (!(this.sourceTable && this.destinationTable)) {
      const meta = (await this.get("META")) ?? {};
      this.sourceTable ||= String(meta.source_table ?? "");
      this.destinationTable ||= String(meta.destination_table ?? "");
    }
    return initialFlag(this.sourceTable, this.destinationTable);
  }

  async read(): Promise<Flag> {
    let item: Record<string, unknown> | undefined;
    for (let attempt = 0; attempt < TORN_READS; attempt++) {
      item = await this.get(FLAG_SK);
      if (item === undefined) return this.initial();
      if ("table" in item && "epoch" in item) return parseFlag(item);
      // moto's server applies an update's attributes one by one, so a read can see a
      // half-written item (DynamoDB cannot): read again.
      await this.clock.sleep(0.005);
    }
    throw new Error(
      `the flag item in ${this.controlTable} stays incomplete: ${JSON.stringify(item)}; ` +
        "check that nothing but livemigrate writes the FLAG item",
    );
  }

  conditionCheck(flag: Flag): ConditionCheckEntry {
    return conditionCheck(flag, this.controlTable, this.migrationId);
  }
}
