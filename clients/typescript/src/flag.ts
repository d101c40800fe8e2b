/**
 * The active-table flag as stored by livemigrate (docs/flag-protocol.md, "The flag").
 *
 * Field names are the attribute names of the FLAG item, so a flag read here and one read by the
 * Python client compare field by field.
 */

/** Which table the flag names. */
export type Side = "source" | "destination";

/** One version of the flag. `epoch` 0 is the implicit initial flag (no FLAG item yet). */
export interface Flag {
  active: Side;
  table: string;
  epoch: number;
  fenced: boolean;
  fenced_until: number;
  fenced_at: number;
  flipped_at: number;
  source_table: string;
  destination_table: string;
  frozen_after: number;
  marks_since: number;
  destination_since: number;
}

/** The flag's sort key in the control table (partition key `MIG#<migration id>`). */
export const FLAG_SK = "FLAG";

function text(value: unknown, fallback: string): string {
  return value === undefined ? fallback : String(value);
}

function seconds(value: unknown): number {
  // Absent, null, 0 and "" all mean "never" (Python: float(x or 0)).
  return value ? Number(value) : 0;
}

/**
 * A flag from the FLAG item's attributes as plain values (numbers as numbers), with the same
 * defaults as the Python client for absent attributes.
 */
export function parseFlag(data: Record<string, unknown>): Flag {
  return {
    active: text(data.active, "source") === "destination" ? "destination" : "source",
    table: text(data.table, ""),
    epoch: Math.trunc(Number(data.epoch ?? 0)),
    fenced: Boolean(data.fenced ?? false),
    fenced_until: seconds(data.fenced_until),
    fenced_at: seconds(data.fenced_at),
    flipped_at: seconds(data.flipped_at),
    source_table: text(data.source_table, ""),
    destination_table: text(data.destination_table, ""),
    frozen_after: seconds(data.frozen_after),
    marks_since: seconds(data.marks_since),
    destination_since: seconds(data.destination_since),
  };
}

/** The flag before any change was written: the source is active, epoch 0. */
export function initialFlag(sourceTable: string, destinationTable: string): Flag {
  return parseFlag({
    active: "source",
    table: sourceTable,
    source_table: sourceTable,
    destination_table: destinationTable,
  });
}

/** Writers must wait: the flag is fenced and the fence has not expired (a crashed cutover). */
export function isFenced(flag: Flag, now: number): boolean {
  return flag.fenced && now < flag.fenced_until;
}

/** A DynamoDB attribute value as this package reads it (the FLAG item uses S, N, BOOL, NULL). */
export type AttributeValue = { S?: string; N?: string; BOOL?: boolean; NULL?: boolean };

/** Plain values of a typed item's scalar attributes (lists, maps and sets are left out). */
export function plainItem(item: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, raw] of Object.entries(item)) {
    const value = raw as AttributeValue;
    if (value.S !== undefined) out[name] = value.S;
    else if (value.N !== undefined) out[name] = Number(value.N);
    else if (value.BOOL !== undefined) out[name] = value.BOOL;
    else if (value.NULL) out[name] = null;
  }
  return out;
}

/** The ConditionCheck entry of a checked write (docs/flag-protocol.md, "Checked writes"). */
export interface ConditionCheckEntry {
  ConditionCheck: {
    TableName: string;
    Key: { pk: { S: string }; sk: { S: string } };
    ConditionExpression: string;
    ExpressionAttributeNames: { "#epoch": string };
    ExpressionAttributeValues: { ":epoch": { N: string } };
  };
}

/**
 * A TransactWriteItems entry that holds only while the flag still has `flag`'s epoch: epoch 0
 * also holds while no FLAG item exists.
 */
export function conditionCheck(
  flag: Flag,
  controlTable: string,
  migrationId: string,
): ConditionCheckEntry {
  let condition = "#epoch = :epoch";
  if (flag.epoch === 0) condition = "attribute_not_exists(#epoch) OR " + condition;
  return {
    ConditionCheck: {
      TableName: controlTable,
      Key: { pk: { S: `MIG#${migrationId}` }, sk: { S: FLAG_SK } },
      ConditionExpression: condition,
      ExpressionAttributeNames: { "#epoch": "epoch" },
      ExpressionAttributeValues: { ":epoch": { N: String(flag.epoch) } },
    },
  };
}
