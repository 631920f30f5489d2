// The rider's reference app on the SDK: choose pickup and dropoff on the map (or the device's
// position), request, follow the search, the driver approaching with its ETA, and the end.

import { connectRider, isActive } from "../../../clients/typescript/src/index.ts";
import { $, devicePosition, openApp, minutes, showConnection, showPoints, showVehicle, tripMap } from "./app.js";
import "./style.css";
import "./app.css";

const TOKEN_KEY = "rider-token";
const REQUEST_KEY = "rider-request-key";

const SAYS = {
  requested: "Looking for a driver…",
  offered: "Looking for a driver…",
  accepted: "Your driver is on the way",
  arrived: "Your driver has arrived",
  in_progress: "On the way to your dropoff",
  completed: "You have arrived. Thank you for riding.",
  expired: "No driver was found. Please try again.",
};

const state = { pickup: null, dropoff: null, trip: null, driverAt: null, eta: null };
let map;
let client;

function error(message) {
  $("error").textContent = message ?? "";
}

function render() {
  const trip = state.trip;
  const riding = trip !== null;
  $("plan").hidden = riding;
  $("ride").hidden = !riding;
  if (!riding) {
    showPoints(map, state.pickup, state.dropoff);
    showVehicle(map, null);
    $("hint").textContent = !state.pickup
      ? "Tap the map to set your pickup, then your dropoff."
      : !state.dropoff
        ? "Now tap your dropoff."
        : "Ready: request a ride, or tap to move the dropoff.";
    $("request").disabled = !(state.pickup && state.dropoff);
    return;
  }
  showPoints(map, trip.pickup, trip.dropoff);
  const status = $("ride-state");
  status.dataset.state = trip.state;
  status.textContent =
    trip.state === "cancelled" ? `Cancelled: ${trip.end_reason ?? "no reason given"}` : SAYS[trip.state];
  $("ride-driver").textContent = trip.driver_id && trip.state !== "offered" ? `Driver: ${trip.driver_id}` : "";
  const approaching = trip.state === "accepted" || trip.state === "in_progress";
  $("ride-eta").textContent =
    approaching && state.eta
      ? `${state.eta.to === "pickup" ? "Arrives" : "At your dropoff"} in ${minutes(state.eta.seconds)}`
      : "";
  showVehicle(map, isActive(trip) && trip.driver_id ? state.driverAt : null);
  $("cancel").hidden = !isActive(trip) || trip.state === "in_progress";
  $("again").hidden = isActive(trip);
}

function onTrip(trip) {
  // The trip on screen, or a newer one still going on (resumed from session_state).
  if (state.trip && trip.trip_id !== state.trip.trip_id && !isActive(trip)) return;
  if (state.trip?.trip_id !== trip.trip_id) {
    state.driverAt = null;
    state.eta = null;
  }
  state.trip = trip;
  if (!isActive(trip)) sessionStorage.removeItem(REQUEST_KEY);
  render();
}

async function request() {
  error();
  $("request").disabled = true;
  // One key per planned ride, kept across reloads: asking again never makes a second trip.
  let key = sessionStorage.getItem(REQUEST_KEY);
  if (!key) {
    key = crypto.getRandomValues(new Uint32Array(4)).join("-");
    sessionStorage.setItem(REQUEST_KEY, key);
  }
  try {
    onTrip(await client.requestRide({ pickup: state.pickup, dropoff: state.dropoff, idempotencyKey: key }));
  } catch (e) {
    error(`The ride could not be requested: ${e.message}`);
    $("request").disabled = false;
  }
}

async function start() {
  const opened = await openApp(TOKEN_KEY);
  if (!opened) return;
  const { token, config } = opened;
  map = await tripMap(config, error);
  client = connectRider({ url: config.ws_url, token });
  showConnection(client);
  client.on("trip", onTrip);
  client.on("driver_position", (p) => {
    if (p.trip_id !== state.trip?.trip_id) return;
    state.driverAt = { lat: p.lat, lng: p.lng };
    state.eta = p.eta ?? null;
    render();
  });
  client.on("problem", (e) => error(e.message));
  map.on("click", (event) => {
    if (state.trip) return;
    const at = { lat: event.lngLat.lat, lng: event.lngLat.lng };
    if (!state.pickup) state.pickup = at;
    else state.dropoff = at;
    render();
  });
  $("use-position").addEventListener("click", async () => {
    try {
      state.pickup = await devicePosition();
      map.easeTo({ center: [state.pickup.lng, state.pickup.lat] });
      render();
    } catch (e) {
      error(e.message);
    }
  });
  $("clear").addEventListener("click", () => {
    state.pickup = state.dropoff = null;
    sessionStorage.removeItem(REQUEST_KEY);
    render();
  });
  $("request").addEventListener("click", request);
  $("cancel").addEventListener("click", async () => {
    try {
      onTrip(await client.cancel(state.trip.trip_id, "cancelled by the rider"));
    } catch (e) {
      error(`Could not cancel: ${e.message}`);
    }
  });
  $("again").addEventListener("click", () => {
    state.trip = null;
    state.pickup = state.dropoff = null;
    render();
  });
  render();
}

// For tests and the curious: what the app holds.
window.riderApp = {
  state,
  get map() {
    return map;
  },
  get client() {
    return client;
  },
};

start().catch((e) => error(e.message));
