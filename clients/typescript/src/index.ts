/**
 * livemigrate-client: follow a livemigrate cutover from Node.js.
 *
 * The protocol is docs/flag-protocol.md in the livemigrate repository; this package and the
 * Python client (livemigrate.client) pass the same test vectors (docs/flag-vectors.json).
 */
export {
  ActiveTable,
  type ActiveTableOptions,
  activeTable,
  type Builder,
  type CancellationReason,
  classifyFailure,
  type ControlTableOptions,
  type Failure,
  FenceTimeout,
  LostRace,
  NotCheckable,
  type TypedItem,
  type WithoutTable,
  type WriteEntry,
  WriteRejected,
} from "./client.js";
export { type Clock, systemClock } from "./clock.js";
export {
  type ConditionCheckEntry,
  conditionCheck,
  type Flag,
  FLAG_SK,
  initialFlag,
  isFenced,
  parseFlag,
  plainItem,
  type Side,
} from "./flag.js";
export { ControlFlagStore, type ControlFlagStoreOptions, type FlagStore } from "./store.js";
