// The dispatch system's client SDK: typed messages (generated from the protocol's JSON Schema),
// a connection that survives lost networks without doing anything twice, and a client per role.

export * from "./protocol.js";
export {
  CloseCode,
  Connection,
  DispatchError,
  PROTOCOL_VERSIONS,
  backoffDelay,
} from "./connection.js";
export type {
  Ack,
  Backoff,
  Command,
  ConnectOptions,
  ConnectionState,
  EventName,
  Listener,
  SessionState,
  SocketFactory,
  SocketLike,
  TokenProvider,
  TokenReason,
  Welcome,
} from "./connection.js";
export {
  DispatcherClient,
  DriverClient,
  RiderClient,
  connectDispatcher,
  connectDriver,
  connectRider,
  isActive,
  newIdempotencyKey,
} from "./roles.js";
export type { DriverOptions, Fix, RideRequest } from "./roles.js";

import { Connection } from "./connection.js";
import type { ConnectOptions } from "./connection.js";

/** Opens a session for any role; the role clients add what each role does. */
export function connect(options: ConnectOptions): Connection {
  return new Connection(options);
}
