// One client's session with the gateway, kept up across lost connections.
//
// A `Connection` says hello with a token from the app's token provider, negotiates the protocol
// version, and turns every server message into a typed event. Commands are promises: each gets
// an id, and the server's `ack` or `error` for that id settles it. When the connection drops,
// the connection comes back with jittered exponential backoff and a token asked for again (so
// an app can refresh one that expired); once the server's `session_state` has been applied,
// every command still unanswered is sent again with the same id and body (and so the same
// idempotency key), so a command the server already carried out is acknowledged as a repeat
// (`changed: false`) and never happens twice.

import type {
  ClientMessage,
  ErrorCode,
  Role,
  ServerMessage,
  SessionLimits,
  TripView,
} from "./protocol.js";

/** The protocol versions this SDK speaks. */
export const PROTOCOL_VERSIONS: readonly number[] = [1];

/** Close codes the gateway uses (see `protocol::client::close_code`). */
export const CloseCode = {
  UNAUTHORIZED: 4001,
  UNSUPPORTED_VERSION: 4002,
  HELLO_TIMEOUT: 4003,
  SLOW_CONSUMER: 4008,
  REPLACED: 4009,
  RATE_LIMITED: 4029,
} as const;

/** A command the server refused, or that got no answer in time (`code: "timeout"`). */
export class DispatchError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = "DispatchError";
    this.code = code;
  }
}

/** Why a token is asked for: the first connection, a reconnection, or a token refused. */
export type TokenReason = "connect" | "reconnect" | "rejected";

/** A token, or a function that returns one (a fresh one when the last was refused). */
export type TokenProvider = string | ((reason: TokenReason) => string | Promise<string>);

export type ConnectionState =
  /** Opening a connection and saying hello. */
  | "connecting"
  /** Welcomed: commands flow. */
  | "open"
  /** Lost; waiting for the next attempt (or for the device to come back online). */
  | "reconnecting"
  /** Closed for good: by the app, by another session of the same client, or no common version. */
  | "closed";

export interface Backoff {
  /** First delay before reconnecting, milliseconds. */
  initialMs: number;
  /** Longest delay, milliseconds. */
  maxMs: number;
}

/** The minimal WebSocket the SDK needs: the browser's, or Node's (22+, or 20 with a flag). */
export interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}
export type SocketFactory = new (url: string) => SocketLike;

export interface ConnectOptions {
  /** The gateway's WebSocket URL, `wss://host/ws`. */
  url: string;
  token: TokenProvider;
  /** The role the token must carry; a token of another role closes the connection. */
  role?: Role;
  /** How long a command waits for its answer once sent, milliseconds (10 s). */
  commandTimeoutMs?: number;
  backoff?: Partial<Backoff>;
  /** The WebSocket class; the platform's by default. */
  WebSocket?: SocketFactory;
  /** Follow the browser's online/offline events (true where there is a `window`). */
  watchNetwork?: boolean;
}

/** The server's `welcome`. */
export type Welcome = Extract<ServerMessage, { type: "welcome" }>;
/** The server's `session_state`, sent after every welcome. */
export type SessionState = Extract<ServerMessage, { type: "session_state" }>;
/** The server's `ack` of a command. */
export type Ack = Extract<ServerMessage, { type: "ack" }>;

/** A command as an app writes it: any client message but hello, without an id. */
export type Command = DistributiveOmit<Exclude<ClientMessage, { type: "hello" }>, "id">;
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

type ServerType = ServerMessage["type"];
type MessageOf<T extends ServerType> = Extract<ServerMessage, { type: T }>;

/** Events besides the server's messages. */
interface LocalEvents {
  state: ConnectionState;
  /** A trip this client knows changed (from session_state, trip_update, acks and offers). */
  trip: TripView;
  /** Something the app may want to show: a refused token, a lost connection. */
  problem: DispatchError;
}
type EventMap = { [T in ServerType]: MessageOf<T> } & LocalEvents;
export type EventName = keyof EventMap;
export type Listener<E extends EventName> = (event: EventMap[E]) => void;

interface Pending {
  id: number;
  frame: string;
  resolve: (ack: Ack) => void;
  reject: (error: DispatchError) => void;
  timer?: ReturnType<typeof setTimeout>;
  /** Written on the current connection (and so waiting for its answer). */
  sent: boolean;
}

const OPEN = 1;
const CLOSING = 2;
const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 15_000 };

/** The delay before attempt `attempt` (0-based): full jitter over an exponential ceiling. */
export function backoffDelay(attempt: number, backoff: Backoff, random = Math.random): number {
  const ceiling = Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(backoff.initialMs / 2 + random() * (ceiling - backoff.initialMs / 2));
}

export class Connection {
  readonly url: string;
  /** The server's latest welcome: the version, role, subject and limits of this session. */
  welcome: Welcome | null = null;
  /** Trips this client takes part in, by id, at their latest known version. */
  readonly trips = new Map<string, TripView>();

  #options: Required<Omit<ConnectOptions, "role" | "backoff" | "WebSocket">> & {
    role?: Role;
    backoff: Backoff;
    WebSocket: SocketFactory;
  };
  #socket: SocketLike | null = null;
  #state: ConnectionState = "connecting";
  #attempt = 0;
  #retry: ReturnType<typeof setTimeout> | null = null;
  #nextId = 1;
  /** Commands not yet answered, in the order they were issued. */
  #pending = new Map<number, Pending>();
  #listeners = new Map<EventName, Set<(event: never) => void>>();
  #tokenRefused = false;
  #welcomed: Array<{ resolve: () => void; reject: (error: DispatchError) => void }> = [];
  #offline = false;
  #unwatch: (() => void) | null = null;

  constructor(options: ConnectOptions) {
    const WebSocketClass =
      options.WebSocket ?? (globalThis as { WebSocket?: SocketFactory }).WebSocket;
    if (!WebSocketClass) {
      throw new Error(
        "no WebSocket: pass one as `WebSocket` (Node 20 needs --experimental-websocket)",
      );
    }
    this.url = options.url;
    this.#options = {
      url: options.url,
      token: options.token,
      role: options.role,
      commandTimeoutMs: options.commandTimeoutMs ?? 10_000,
      backoff: { ...DEFAULT_BACKOFF, ...options.backoff },
      WebSocket: WebSocketClass,
      watchNetwork: options.watchNetwork ?? typeof window !== "undefined",
    };
    if (this.#options.watchNetwork) this.#watchNetwork();
    void this.#open("connect");
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** The session's limits, once welcomed. */
  get limits(): SessionLimits | null {
    return this.welcome?.limits ?? null;
  }

  /** Commands sent or waiting to be, not yet answered. */
  get unanswered(): number {
    return this.#pending.size;
  }

  /** Listens to a server message type or a local event; returns a function that stops it. */
  on<E extends EventName>(event: E, listener: Listener<E>): () => void {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener as (event: never) => void);
    return () => set.delete(listener as (event: never) => void);
  }

  /** Resolves once the connection is open (at once if it is). */
  ready(): Promise<Welcome> {
    if (this.#state === "open" && this.welcome) return Promise.resolve(this.welcome);
    if (this.#state === "closed") {
      return Promise.reject(new DispatchError("unavailable", "the connection is closed"));
    }
    return new Promise((resolve, reject) =>
      this.#welcomed.push({ resolve: () => resolve(this.welcome!), reject }),
    );
  }

  /**
   * Sends a command; resolves with the server's ack, rejects with a `DispatchError` carrying
   * the server's code, or `timeout` when no answer came within the command timeout of being
   * sent. While the connection is down the command waits and is sent once it is back.
   */
  command(command: Command): Promise<Ack> {
    if (this.#state === "closed") {
      return Promise.reject(new DispatchError("unavailable", "the connection is closed"));
    }
    const id = this.#nextId++;
    const frame = JSON.stringify({ ...command, id });
    return new Promise<Ack>((resolve, reject) => {
      const pending: Pending = { id, frame, resolve, reject, sent: false };
      this.#pending.set(id, pending);
      if (this.#state === "open") this.#write(pending);
    });
  }

  /**
   * Sends a frame that needs no answer (a position report) if the connection is open;
   * returns whether it was sent. Nothing is kept for later.
   */
  sendNow(message: ClientMessage): boolean {
    if (this.#state !== "open" || this.#socket?.readyState !== OPEN) return false;
    this.#socket.send(JSON.stringify(message));
    return true;
  }

  /** Closes for good: unanswered commands are rejected with `unavailable`. */
  close(): void {
    this.#setState("closed");
    this.#unwatch?.();
    if (this.#retry) clearTimeout(this.#retry);
    this.#socket?.close(1000, "closed by the app");
    this.#socket = null;
    for (const pending of this.#pending.values()) {
      if (pending.timer) clearTimeout(pending.timer);
      pending.reject(new DispatchError("unavailable", "the connection was closed"));
    }
    this.#pending.clear();
    for (const waiter of this.#welcomed.splice(0)) {
      waiter.reject(new DispatchError("unavailable", "the connection was closed"));
    }
  }

  /** Drops the current connection as if the network had, and reconnects (for tests and apps). */
  reconnect(): void {
    if (this.#state === "closed") return;
    this.#socket?.close(1000, "reconnecting");
  }

  #emit<E extends EventName>(event: E, value: EventMap[E]): void {
    for (const listener of this.#listeners.get(event) ?? []) {
      try {
        (listener as Listener<E>)(value);
      } catch (error) {
        // A listener's bug must not stop the others, nor the connection.
        console.error(`dispatch client: a "${event}" listener threw`, error);
      }
    }
  }

  #setState(state: ConnectionState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit("state", state);
  }

  async #open(reason: TokenReason): Promise<void> {
    if (this.#state === "closed") return;
    this.#setState("connecting");
    let token: string;
    try {
      const provider = this.#options.token;
      token = typeof provider === "string" ? provider : await provider(reason);
    } catch (error) {
      this.#emit("problem", new DispatchError("unauthorized", `no token: ${String(error)}`));
      this.#scheduleRetry();
      return;
    }
    // Closed while the token was being fetched.
    if ((this.#state as ConnectionState) === "closed") return;
    let socket: SocketLike;
    try {
      socket = new this.#options.WebSocket(this.#options.url);
    } catch (error) {
      this.#emit("problem", new DispatchError("unavailable", `cannot connect: ${String(error)}`));
      this.#scheduleRetry();
      return;
    }
    this.#socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      socket.send(JSON.stringify({ type: "hello", token, versions: PROTOCOL_VERSIONS }));
    };
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let message: ServerMessage;
      try {
        message = JSON.parse(event.data) as ServerMessage;
      } catch {
        return;
      }
      this.#receive(message);
    };
    const ended = (code: number, reason: string) => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.#lost(code, reason);
    };
    socket.onclose = (event) => ended(event.code, event.reason);
    socket.onerror = () => {
      // Browsers follow with a close event; some WebSockets (Node 20's) do not when the
      // connection could not be made at all.
      // (and leave it CONNECTING).
      setTimeout(() => {
        if (!opened || socket.readyState >= CLOSING) ended(1006, "the connection failed");
      }, 0);
    };
  }

  #lost(code: number, reason: string): void {
    const wasOpen = this.#state === "open";
    this.welcome = wasOpen ? this.welcome : null;
    for (const pending of this.#pending.values()) {
      // Answered by nobody now: sent again, same id and body, once the session is back.
      if (pending.timer) clearTimeout(pending.timer);
      pending.timer = undefined;
      pending.sent = false;
    }
    if (this.#state === "closed") return;
    if (code === CloseCode.REPLACED || code === CloseCode.UNSUPPORTED_VERSION) {
      const error =
        code === CloseCode.REPLACED
          ? new DispatchError("conflict", "this client connected again elsewhere")
          : new DispatchError("unsupported_version", reason || "no common protocol version");
      this.#emit("problem", error);
      this.close();
      return;
    }
    this.#tokenRefused = code === CloseCode.UNAUTHORIZED;
    if (this.#tokenRefused) {
      this.#emit("problem", new DispatchError("unauthorized", reason || "the token was refused"));
    }
    this.#scheduleRetry();
  }

  #scheduleRetry(): void {
    if (this.#state === "closed") return;
    this.#setState("reconnecting");
    if (this.#retry) clearTimeout(this.#retry);
    if (this.#offline) return; // the `online` event reconnects
    const delay = backoffDelay(this.#attempt++, this.#options.backoff);
    this.#retry = setTimeout(() => {
      this.#retry = null;
      void this.#open(this.#tokenRefused ? "rejected" : "reconnect");
    }, delay);
  }

  #receive(message: ServerMessage): void {
    switch (message.type) {
      case "welcome":
        if (this.#options.role && message.role !== this.#options.role) {
          this.#emit(
            "problem",
            new DispatchError("forbidden", `the token is a ${message.role}'s, not a ${this.#options.role}'s`),
          );
          this.close();
          return;
        }
        this.welcome = message;
        break;
      case "session_state":
        for (const trip of message.trips) this.#trip(trip);
        break;
      case "ack":
        if (message.trip) this.#trip(message.trip);
        this.#settle(message.id, (p) => p.resolve(message));
        break;
      case "error":
        if (message.id != null) {
          const error = new DispatchError(message.code, message.message);
          this.#settle(message.id, (p) => p.reject(error));
        }
        break;
      case "trip_update":
      case "offer":
        this.#trip(message.trip);
        break;
    }
    this.#emit(message.type, message as never);
    // The state follows the welcome; when the server could not read it, it says so in an
    // error without an id, and the session goes on without it.
    const stateTold =
      message.type === "session_state" || (message.type === "error" && message.id == null);
    if (stateTold && this.welcome && this.#state === "connecting") this.#resumed();
  }

  /** The session is back: the state was applied, so what is unanswered goes out again. */
  #resumed(): void {
    this.#attempt = 0;
    this.#tokenRefused = false;
    this.#setState("open");
    for (const pending of this.#pending.values()) {
      if (!pending.sent) this.#write(pending);
    }
    for (const waiter of this.#welcomed.splice(0)) waiter.resolve();
  }

  #write(pending: Pending): void {
    const socket = this.#socket;
    if (!socket || socket.readyState !== OPEN) return;
    socket.send(pending.frame);
    pending.sent = true;
    pending.timer = setTimeout(() => {
      this.#settle(pending.id, (p) =>
        p.reject(
          new DispatchError(
            "timeout",
            `no answer within ${this.#options.commandTimeoutMs} ms; retrying with the same idempotency key is safe`,
          ),
        ),
      );
    }, this.#options.commandTimeoutMs);
  }

  #settle(id: number, settle: (pending: Pending) => void): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    if (pending.timer) clearTimeout(pending.timer);
    settle(pending);
  }

  #trip(trip: TripView): void {
    const known = this.trips.get(trip.trip_id);
    if (known && known.version > trip.version) return;
    this.trips.set(trip.trip_id, trip);
    if (!known || known.version !== trip.version || known.state !== trip.state) {
      this.#emit("trip", trip);
    }
  }

  #watchNetwork(): void {
    const target = globalThis as unknown as {
      addEventListener?: (type: string, listener: () => void) => void;
      removeEventListener?: (type: string, listener: () => void) => void;
      navigator?: { onLine?: boolean };
    };
    if (!target.addEventListener || !target.removeEventListener) return;
    const offline = () => {
      // The device says it has no network: drop the socket now rather than wait for TCP to
      // notice, so what the app does meanwhile is queued.
      this.#offline = true;
      this.#socket?.close(1000, "device offline");
    };
    const online = () => {
      this.#offline = false;
      this.#attempt = 0;
      if (this.#state === "reconnecting") {
        if (this.#retry) clearTimeout(this.#retry);
        this.#retry = null;
        void this.#open(this.#tokenRefused ? "rejected" : "reconnect");
      }
    };
    this.#offline = target.navigator?.onLine === false;
    target.addEventListener("offline", offline);
    target.addEventListener("online", online);
    this.#unwatch = () => {
      target.removeEventListener!("offline", offline);
      target.removeEventListener!("online", online);
    };
  }
}
