// What each role does over a `Connection`: drivers report positions and carry out trips,
// riders request and follow rides, dispatchers watch an area and step in.

import { Connection, DispatchError } from "./connection.js";
import type { Ack, ConnectOptions } from "./connection.js";
import type {
  DriverState,
  Point,
  TripStage,
  TripView,
  VehicleClass,
  Viewport,
} from "./protocol.js";

const TERMINAL = new Set(["completed", "cancelled", "expired"]);

/** Whether a trip is still going on. */
export function isActive(trip: TripView): boolean {
  return !TERMINAL.has(trip.state);
}

function tripOf(ack: Ack): TripView {
  if (!ack.trip) throw new DispatchError("internal", "the server's ack carries no trip");
  return ack.trip;
}

/** A random idempotency key (letters, digits and `-`, as the protocol allows). */
export function newIdempotencyKey(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

class RoleClient {
  readonly connection: Connection;
  constructor(connection: Connection) {
    this.connection = connection;
  }
  get on(): Connection["on"] {
    return this.connection.on.bind(this.connection);
  }
  ready() {
    return this.connection.ready();
  }
  close(): void {
    this.connection.close();
  }
  /** Where a trip this client takes part in stands now. */
  async getTrip(tripId: string): Promise<TripView> {
    return tripOf(await this.connection.command({ type: "get_trip", trip_id: tripId }));
  }
  /** Cancels a trip that has not ended. */
  async cancel(tripId: string, reason?: string): Promise<TripView> {
    return tripOf(
      await this.connection.command({ type: "cancel_trip", trip_id: tripId, reason: reason ?? null }),
    );
  }
  /** Trips still going on, newest first. */
  activeTrips(): TripView[] {
    return [...this.connection.trips.values()]
      .filter(isActive)
      .sort((a, b) => b.created_at - a.created_at);
  }
}

/** A position as the device measured it. */
export interface Fix {
  lat: number;
  lng: number;
  heading?: number | null;
  speed?: number | null;
  accuracy?: number | null;
  /** When the fix was taken, ms since the epoch; now by default. */
  ts?: number;
}

export interface DriverOptions extends ConnectOptions {
  /** A fix older than this when the connection comes back is not sent (ms; 10 s). */
  staleAfterMs?: number;
  /** The shortest interval between position reports (ms), besides the server's limit. */
  minReportIntervalMs?: number;
  /**
   * A device standing still gives no new fix; its last one is reported again this often
   * (ms; 5 s) so the server does not take the driver for gone, for as long as `holdFixMs`.
   */
  repeatEveryMs?: number;
  /** How long after it was measured a fix is still repeated (ms; 2 min). */
  holdFixMs?: number;
}

export class DriverClient extends RoleClient {
  /** The server's view of this driver, from the latest session_state. */
  status: DriverState | null = null;
  #staleAfterMs: number;
  #minIntervalMs: number;
  #latest: Fix & { ts: number } | null = null;
  #lastSentAt = 0;
  #seq = 0;
  #flush: ReturnType<typeof setTimeout> | null = null;
  #progress: Promise<unknown> = Promise.resolve();
  /** The device's latest fix, kept to be repeated, with when it was measured. */
  #held: (Fix & { ts: number }) | null = null;
  #repeatEveryMs: number;
  #holdFixMs: number;
  #repeater: ReturnType<typeof setInterval>;

  constructor(options: DriverOptions) {
    super(new Connection({ ...options, role: options.role ?? "driver" }));
    this.#staleAfterMs = options.staleAfterMs ?? 10_000;
    this.#minIntervalMs = options.minReportIntervalMs ?? 0;
    this.#repeatEveryMs = options.repeatEveryMs ?? 5_000;
    this.#holdFixMs = options.holdFixMs ?? 120_000;
    this.#repeater = setInterval(() => {
      if (Date.now() - this.#lastSentAt >= this.#repeatEveryMs) this.#repeat();
    }, Math.max(250, Math.floor(this.#repeatEveryMs / 4)));
    // In Node, the repeating alone does not keep a process alive.
    (this.#repeater as { unref?: () => void }).unref?.();
    this.connection.on("state", (state) => {
      if (state === "closed") clearInterval(this.#repeater);
    });
    this.connection.on("session_state", (state) => {
      this.status = state.driver ?? null;
    });
    this.connection.on("state", (state) => {
      if (state === "open") this.#report();
    });
  }

  /** Ready for jobs with this vehicle. */
  async goOnline(vehicleClass: VehicleClass, capacity = 1): Promise<Ack> {
    const ack = await this.connection.command({
      type: "go_online",
      vehicle_class: vehicleClass,
      capacity,
    });
    this.status = { online: true, vehicle_class: vehicleClass, capacity };
    // Where it is matters from now on: say it at once rather than at the next fix.
    this.#repeat();
    return ack;
  }

  async goOffline(): Promise<Ack> {
    const ack = await this.connection.command({ type: "go_offline" });
    this.status = { ...(this.status ?? {}), online: false };
    return ack;
  }

  async accept(tripId: string): Promise<TripView> {
    return tripOf(await this.connection.command({ type: "accept_offer", trip_id: tripId }));
  }

  async decline(tripId: string): Promise<Ack> {
    return this.connection.command({ type: "decline_offer", trip_id: tripId });
  }

  arrived(tripId: string): Promise<TripView> {
    return this.progress(tripId, "arrived");
  }
  started(tripId: string): Promise<TripView> {
    return this.progress(tripId, "started");
  }
  completed(tripId: string): Promise<TripView> {
    return this.progress(tripId, "completed");
  }

  /**
   * Reports a stage reached now. Reports go out one after another in the order made, each
   * once the one before it is answered; without a connection they wait for it, stamped with
   * when the stage was reached, so the server checks them against where the driver was then.
   */
  progress(tripId: string, stage: TripStage): Promise<TripView> {
    const ts = Date.now();
    const next = this.#progress.then(async () =>
      tripOf(await this.connection.command({ type: "trip_progress", trip_id: tripId, stage, ts })),
    );
    this.#progress = next.catch(() => undefined);
    return next;
  }

  /**
   * Reports the device's position. Reports are spaced to stay within the server's message
   * rate (half of it, leaving the rest for commands); between two, only the latest is kept.
   * Without a connection nothing is queued: when it is back, the latest fix is sent if it is
   * still fresh, and older ones never are.
   */
  reportLocation(fix: Fix): void {
    this.#latest = { ...fix, ts: fix.ts ?? Date.now() };
    this.#held = this.#latest;
    this.#report();
  }

  /** The held fix again, as of now, while it is recent enough to stand for the device. */
  #repeat(): void {
    const held = this.#held;
    if (!held || Date.now() - held.ts > this.#holdFixMs || this.#latest) return;
    this.#latest = { ...held, ts: Date.now() };
    this.#report();
  }

  /**
   * Reports a position now and resolves once the server has taken it: for the moments a
   * position matters (just before reporting `arrived`). Not throttled; use sparingly.
   */
  async locate(fix: Fix): Promise<Ack> {
    this.#seq = Math.max(this.#seq + 1, Date.now());
    return this.connection.command({
      type: "location",
      lat: fix.lat,
      lng: fix.lng,
      heading: fix.heading ?? null,
      speed: fix.speed ?? null,
      accuracy: fix.accuracy ?? null,
      ts: fix.ts ?? Date.now(),
      seq: this.#seq,
    });
  }

  /** The interval between position reports this session allows, ms. */
  get reportIntervalMs(): number {
    const rate = this.connection.limits?.messages_per_sec ?? 1;
    return Math.max(this.#minIntervalMs, Math.ceil(2000 / Math.max(rate, 1)));
  }

  #report(): void {
    const fix = this.#latest;
    if (!fix || this.#flush || this.connection.state !== "open") return;
    if (Date.now() - fix.ts > this.#staleAfterMs) {
      this.#latest = null;
      return;
    }
    const wait = this.#lastSentAt + this.reportIntervalMs - Date.now();
    if (wait > 0) {
      this.#flush = setTimeout(() => {
        this.#flush = null;
        this.#report();
      }, wait);
      return;
    }
    this.#seq = Math.max(this.#seq + 1, Date.now());
    const sent = this.connection.sendNow({
      type: "location",
      lat: fix.lat,
      lng: fix.lng,
      heading: fix.heading ?? null,
      speed: fix.speed ?? null,
      accuracy: fix.accuracy ?? null,
      ts: fix.ts,
      seq: this.#seq,
    });
    if (sent) {
      this.#lastSentAt = Date.now();
      this.#latest = null;
    }
  }
}

export interface RideRequest {
  pickup: Point;
  dropoff: Point;
  vehicleClass?: VehicleClass;
  minCapacity?: number;
  /** The same key always yields the same trip; a random one by default. */
  idempotencyKey?: string;
}

export class RiderClient extends RoleClient {
  constructor(options: ConnectOptions) {
    super(new Connection({ ...options, role: options.role ?? "rider" }));
  }

  /** Asks for a ride; resolves with the trip, requested (or where it stands, on a repeat). */
  async requestRide(request: RideRequest): Promise<TripView> {
    const ack = await this.connection.command({
      type: "request_ride",
      pickup: request.pickup,
      dropoff: request.dropoff,
      vehicle_class: request.vehicleClass ?? null,
      min_capacity: request.minCapacity ?? null,
      idempotency_key: request.idempotencyKey ?? newIdempotencyKey(),
    });
    return tripOf(ack);
  }
}

export class DispatcherClient extends RoleClient {
  #viewport: { viewport: Viewport; zoom: number } | null = null;

  constructor(options: ConnectOptions) {
    super(new Connection({ ...options, role: options.role ?? "dispatcher" }));
    // A subscription lives in the server's session: a new session needs it again.
    this.connection.on("welcome", () => {
      if (this.#viewport) void this.#subscribe().catch(() => undefined);
    });
  }

  /** Watches an area; replaces the earlier one, and is renewed after a reconnect. */
  subscribeViewport(viewport: Viewport, zoom: number): Promise<Ack> {
    this.#viewport = { viewport, zoom };
    return this.#subscribe();
  }

  #subscribe(): Promise<Ack> {
    const { viewport, zoom } = this.#viewport!;
    return this.connection.command({ type: "subscribe_viewport", viewport, zoom });
  }

  async assignDriver(tripId: string, driverId: string): Promise<TripView> {
    return tripOf(
      await this.connection.command({ type: "assign_driver", trip_id: tripId, driver_id: driverId }),
    );
  }
}

export function connectDriver(options: DriverOptions): DriverClient {
  return new DriverClient(options);
}
export function connectRider(options: ConnectOptions): RiderClient {
  return new RiderClient(options);
}
export function connectDispatcher(options: ConnectOptions): DispatcherClient {
  return new DispatcherClient(options);
}
