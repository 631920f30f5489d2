/* Generated from protocol/schema/client-protocol.json by scripts/generate.mjs: do not edit.
 * Regenerate with `npm run generate` after the protocol changes. */

/**
 * Everything a client may send.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "ClientMessage".
 */
export type ClientMessage =
  | {
      /**
       * A signed token naming the client's role and id.
       */
      token: string;
      type: "hello";
      /**
       * Protocol versions the client speaks.
       */
      versions: number[];
    }
  | {
      /**
       * Radius of the position's uncertainty, metres.
       */
      accuracy?: number | null;
      /**
       * Degrees clockwise from north, [0, 360).
       */
      heading?: number | null;
      /**
       * Set only when the driver wants an ack for this report.
       */
      id?: number | null;
      lat: number;
      lng: number;
      /**
       * Increases with every report of one driver; older or repeated ones are dropped.
       */
      seq: number;
      /**
       * Metres per second.
       */
      speed?: number | null;
      /**
       * When the device took the fix, milliseconds since the Unix epoch.
       */
      ts: number;
      type: "location";
    }
  | {
      /**
       * Seats (or parcel slots) available.
       */
      capacity: number;
      id: number;
      type: "go_online";
      vehicle_class: VehicleClass;
    }
  | {
      id: number;
      type: "go_offline";
    }
  | {
      id: number;
      trip_id: string;
      type: "accept_offer";
    }
  | {
      id: number;
      trip_id: string;
      type: "decline_offer";
    }
  | {
      id: number;
      stage: TripStage;
      trip_id: string;
      /**
       * When the driver reached the stage, by the clock of its `location` reports: a
       * report sent late (queued while the app had no signal, or retried) is checked
       * against where the driver was then. When absent, against its latest position.
       */
      ts?: number | null;
      type: "trip_progress";
    }
  | {
      dropoff: Point;
      id: number;
      /**
       * Chosen by the client; a retried request with the same key yields the same trip.
       */
      idempotency_key: string;
      min_capacity?: number | null;
      pickup: Point;
      type: "request_ride";
      vehicle_class?: VehicleClass | null;
    }
  | {
      id: number;
      reason?: string | null;
      trip_id: string;
      type: "cancel_trip";
    }
  | {
      id: number;
      type: "subscribe_viewport";
      viewport: Viewport;
      /**
       * Map zoom level; below the server's threshold the feed is per-cell aggregates.
       */
      zoom: number;
    }
  | {
      driver_id: string;
      id: number;
      trip_id: string;
      type: "assign_driver";
    }
  | {
      id: number;
      trip_id: string;
      type: "get_trip";
    };
/**
 * The kind of vehicle a driver has and a job may require.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "VehicleClass".
 */
export type VehicleClass = "standard" | "comfort" | "xl" | "van" | "bike";
/**
 * A stage a driver reports while carrying out a trip.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "TripStage".
 */
export type TripStage = "arrived" | "started" | "completed";
/**
 * Everything the server may send.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "ServerMessage".
 */
export type ServerMessage =
  | {
      limits: SessionLimits;
      role: Role;
      /**
       * The authenticated id of the client.
       */
      subject: string;
      type: "welcome";
      version: number;
    }
  | {
      driver?: DriverState | null;
      trips: TripView[];
      type: "session_state";
    }
  | {
      /**
       * False when the command had already been carried out (an idempotent repeat).
       */
      changed: boolean;
      id: number;
      trip?: TripView | null;
      type: "ack";
    }
  | {
      code: ErrorCode;
      id?: number | null;
      message: string;
      type: "error";
    }
  | {
      expires_at: number;
      /**
       * Estimated time to reach the pickup, seconds.
       */
      pickup_eta_s: number;
      trip: TripView;
      type: "offer";
    }
  | {
      trip: TripView;
      type: "trip_update";
    }
  | {
      driver_id: string;
      /**
       * When the driver should reach the pickup (while it approaches) or the dropoff (on
       * board); absent while it waits at the pickup.
       */
      eta?: Eta | null;
      heading?: number | null;
      lat: number;
      lng: number;
      trip_id: string;
      ts: number;
      type: "driver_position";
    }
  | {
      type: "vehicles";
      vehicles: VehicleView[];
    }
  | {
      cells: CellAggregate[];
      /**
       * H3 resolution of the cells.
       */
      resolution: number;
      type: "cell_aggregates";
    }
  | {
      /**
       * Drivers waiting in the queue.
       */
      length: number;
      /**
       * 1 for the head of the queue.
       */
      place: number;
      type: "queue_place";
      zone_id: string;
      zone_name: string;
    };
/**
 * Which kind of client a token belongs to.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "Role".
 */
export type Role = "driver" | "rider" | "dispatcher";
/**
 * Who caused a transition.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "Actor".
 */
export type Actor = ("rider" | "driver" | "dispatcher") | "system";
/**
 * Where a trip stands.
 *
 * ```text
 * requested -> offered -> accepted -> arrived -> in_progress -> completed
 * offered -> requested            (declined or offer expired; that driver is excluded)
 * requested -> expired            (search deadline passed, no driver found)
 * any non-terminal -> cancelled   (rider, driver, dispatcher or system, with a reason)
 * ```
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "TripState".
 */
export type TripState =
  | "requested"
  | "offered"
  | "accepted"
  | "arrived"
  | "in_progress"
  | "completed"
  | "cancelled"
  | "expired";
/**
 * Why a request failed. Clients branch on this; the accompanying message is for people.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "ErrorCode".
 */
export type ErrorCode =
  | "unauthorized"
  | "forbidden"
  | "unsupported_version"
  | "invalid_message"
  | "invalid_coordinates"
  | "invalid_field"
  | "too_large"
  | "rate_limited"
  | "stale_update"
  | "not_found"
  | "invalid_transition"
  | "conflict"
  | "outside_service_area"
  | "unavailable"
  | "timeout"
  | "internal"
  | "not_at_pickup"
  | "pickup_not_allowed";
/**
 * Where a rider's driver is heading next.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "EtaTo".
 */
export type EtaTo = "pickup" | "dropoff";
/**
 * How a vehicle appears on the dispatcher's map.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "VehicleStatus".
 */
export type VehicleStatus = ("available" | "offered" | "on_trip" | "offline") | "stale";

/**
 * Protocol versions [1]. Each frame is one object with a "type" tag.
 */
export interface ClientProtocolWebSocketJSONTextFrames {
  client_to_server: ClientMessage;
  server_to_client: ServerMessage;
}
/**
 * A WGS84 position in degrees.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "Point".
 */
export interface Point {
  /**
   * Latitude in degrees, -90 to 90.
   */
  lat: number;
  /**
   * Longitude in degrees, -180 to 180.
   */
  lng: number;
}
/**
 * The corners of a map viewport.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "Viewport".
 */
export interface Viewport {
  east: number;
  north: number;
  south: number;
  west: number;
}
/**
 * Limits the server applies to a session, told to the client at welcome.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "SessionLimits".
 */
export interface SessionLimits {
  /**
   * Largest frame the server accepts, bytes.
   */
  max_message_bytes: number;
  /**
   * Sustained messages per second the server accepts from this client.
   */
  messages_per_sec: number;
}
/**
 * A driver's status as the server knows it, sent on (re)connect.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "DriverState".
 */
export interface DriverState {
  capacity?: number | null;
  online: boolean;
  vehicle_class?: VehicleClass | null;
}
/**
 * A trip as shown to its rider, its driver and dispatchers.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "TripView".
 */
export interface TripView {
  created_at: number;
  /**
   * The driver offered or assigned, if any.
   */
  driver_id?: string | null;
  dropoff: Point;
  end_reason?: string | null;
  /**
   * Who ended the trip and why, once cancelled or expired.
   */
  ended_by?: Actor | null;
  min_capacity?: number | null;
  pickup: Point;
  /**
   * The region (H3 cell, hexadecimal) the pickup lies in.
   */
  region: string;
  rider_id: string;
  state: TripState;
  trip_id: string;
  updated_at: number;
  vehicle_class?: VehicleClass | null;
  /**
   * Incremented by every transition.
   */
  version: number;
}
/**
 * A driver's estimated time to where it is heading, from the ETA model the matcher ranks
 * drivers by.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "Eta".
 */
export interface Eta {
  /**
   * Seconds from the position it comes with.
   */
  seconds: number;
  to: EtaTo;
}
/**
 * One vehicle in a dispatcher's viewport.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "VehicleView".
 */
export interface VehicleView {
  driver_id: string;
  heading?: number | null;
  lat: number;
  lng: number;
  status: VehicleStatus;
  ts: number;
}
/**
 * Supply and demand in one H3 cell.
 *
 * This interface was referenced by `ClientProtocolWebSocketJSONTextFrames`'s JSON-Schema
 * via the `definition` "CellAggregate".
 */
export interface CellAggregate {
  available: number;
  /**
   * H3 cell, hexadecimal.
   */
  cell: string;
  open_requests: number;
  vehicles: number;
}
