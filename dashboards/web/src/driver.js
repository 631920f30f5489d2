// The driver's reference app on the SDK: go online with a vehicle, share the device's position,
// answer offers before they expire, and report arrived, started and completed; reports made
// without signal wait in order and go out once the connection is back.

import { connectDriver, isActive } from "../../../clients/typescript/src/index.ts";
import { $, openApp, minutes, showConnection, showPoints, showVehicle, tripMap } from "./app.js";
import "./style.css";
import "./app.css";

const TOKEN_KEY = "driver-token";
const JOB_STATES = new Set(["accepted", "arrived", "in_progress"]);
const SAYS = {
  accepted: "Drive to the pickup",
  arrived: "Waiting for the rider",
  in_progress: "Drive to the dropoff",
  completed: "Trip completed",
  cancelled: "Trip cancelled",
  expired: "Trip expired",
};
/** The state a reported stage leads to. */
const AFTER = { arrived: "arrived", started: "in_progress", completed: "completed" };

const state = {
  me: null,
  subject: null,
  offer: null,
  job: null,
  // Where the job will be once the reports still unanswered are carried out.
  expected: null,
  unanswered: 0,
  reports: 0,
};
let map;
let client;
let countdown = null;

function error(message) {
  $("error").textContent = message ?? "";
}

function renderShift() {
  const status = client.status;
  const online = Boolean(status?.online);
  $("shift-state").dataset.online = String(online);
  $("shift-state").textContent = online ? `Online: ${status.vehicle_class ?? "vehicle"}` : "Offline";
  $("go-online").hidden = online;
  $("go-offline").hidden = !online;
}

function renderOffer() {
  const offer = state.offer;
  $("offer").hidden = !offer;
  if (countdown) clearInterval(countdown);
  countdown = null;
  if (!offer) return;
  $("offer-eta").textContent = `Pickup in ${minutes(offer.pickup_eta_s)}`;
  showPoints(map, offer.trip.pickup, offer.trip.dropoff);
  const tick = () => {
    const left = Math.max(0, Math.ceil((offer.expires_at - Date.now()) / 1000));
    $("offer-countdown").textContent = String(left);
    if (left === 0) {
      state.offer = null;
      renderOffer();
    }
  };
  tick();
  countdown = setInterval(tick, 250);
}

function renderJob() {
  const job = state.job;
  $("job").hidden = !job;
  if (!job) {
    if (!state.offer) showPoints(map, null, null);
    return;
  }
  const shown = state.expected ?? job.state;
  $("job-state").dataset.state = job.state;
  // The state the server confirmed is the data; the text already says what was reported.
  $("job-state").textContent =
    job.state === "cancelled"
      ? `Trip cancelled: ${job.end_reason ?? ""}`
      : `${SAYS[shown]}${shown === job.state ? "" : " (reported, not confirmed yet)"}`;
  $("job-heading").textContent = shown === "accepted" ? "Pickup: the green point" : shown === "in_progress" ? "Dropoff: the red point" : "";
  showPoints(map, shown === "in_progress" ? null : job.pickup, job.dropoff);
  $("arrived").disabled = shown !== "accepted";
  $("started").disabled = shown !== "arrived";
  $("completed").disabled = shown !== "in_progress";
  const waiting = state.unanswered > 0;
  $("queued").textContent = !waiting
    ? ""
    : client.connection.state === "open"
      ? "Sending…"
      : `No signal: ${state.unanswered} report(s) will be sent when the connection is back`;
}

function onTrip(trip) {
  if (state.offer?.trip.trip_id === trip.trip_id && trip.state !== "offered") {
    state.offer = null;
    renderOffer();
  }
  const mine = trip.driver_id === state.subject;
  if (mine && JOB_STATES.has(trip.state)) {
    state.job = trip;
  } else if (state.job?.trip_id === trip.trip_id) {
    state.job = trip; // ended: shown until the next job
  }
  if (state.expected && state.job && !isActive(state.job)) state.expected = null;
  renderJob();
}

async function report(stage) {
  const job = state.job;
  error();
  state.expected = AFTER[stage];
  state.unanswered += 1;
  renderJob();
  try {
    onTrip(await client.progress(job.trip_id, stage));
    state.reports += 1;
  } catch (e) {
    state.expected = null;
    error(`${stage} was refused: ${e.message}`);
  } finally {
    state.unanswered -= 1;
    if (state.unanswered === 0) state.expected = null;
    renderJob();
  }
}

/** Reports a fix: the device's, or where the driver tapped when the device has none. */
function locate(fix) {
  state.me = fix;
  client.reportLocation(fix);
  showVehicle(map, fix, "me");
}

/** How long a device fix is trusted over a tapped position. */
const DEVICE_FIX_MS = 30_000;

function shareLocation() {
  // Without a device position (no GPS, refused, or a page not served over HTTPS), a tap on
  // the map says where the driver is.
  map.on("click", (event) => {
    if (state.me?.device && Date.now() - state.me.ts < DEVICE_FIX_MS) return;
    locate({ lat: event.lngLat.lat, lng: event.lngLat.lng, ts: Date.now(), device: false });
  });
  if (!navigator.geolocation) {
    error("This device has no location: tap the map to say where you are.");
    return;
  }
  navigator.geolocation.watchPosition(
    (p) => {
      const fix = {
        lat: p.coords.latitude,
        lng: p.coords.longitude,
        heading: Number.isFinite(p.coords.heading) ? p.coords.heading % 360 : null,
        speed: Number.isFinite(p.coords.speed) ? p.coords.speed : null,
        accuracy: Number.isFinite(p.coords.accuracy) ? Math.min(p.coords.accuracy, 10_000) : null,
        ts: Math.round(p.timestamp),
        device: true,
      };
      if ($("error").textContent.startsWith("Location unavailable")) error();
      locate(fix);
    },
    (e) => {
      // A passing failure while fixes keep coming is not worth a word.
      if (state.me?.device && Date.now() - state.me.ts < DEVICE_FIX_MS) return;
      error(`Location unavailable (${e.message || "no fix"}): tap the map to say where you are.`);
    },
    { enableHighAccuracy: true, maximumAge: 1_000 },
  );
}

async function start() {
  const opened = await openApp(TOKEN_KEY);
  if (!opened) return;
  const { token, config } = opened;
  map = await tripMap(config, error);
  client = connectDriver({ url: config.ws_url, token });
  showConnection(client);
  client.on("welcome", (w) => (state.subject = w.subject));
  client.on("session_state", renderShift);
  client.on("state", renderJob);
  client.on("trip", onTrip);
  client.on("offer", (offer) => {
    state.offer = offer;
    renderOffer();
  });
  client.on("queue_place", (q) => {
    $("queue-place").textContent = q.place ? `Queue at ${q.zone_name}: ${q.place} of ${q.length}` : "";
  });
  client.on("problem", (e) => error(e.message));
  $("go-online").addEventListener("click", async () => {
    error();
    try {
      await client.goOnline($("vehicle-class").value, Number($("capacity").value) || 1);
    } catch (e) {
      error(`Could not go online: ${e.message}`);
    }
    renderShift();
  });
  $("go-offline").addEventListener("click", async () => {
    try {
      await client.goOffline();
    } catch (e) {
      error(`Could not go offline: ${e.message}`);
    }
    renderShift();
  });
  $("accept").addEventListener("click", async () => {
    const offer = state.offer;
    if (!offer) return;
    try {
      onTrip(await client.accept(offer.trip.trip_id));
    } catch (e) {
      error(`Too late: ${e.message}`);
    }
    state.offer = null;
    renderOffer();
  });
  $("decline").addEventListener("click", async () => {
    const offer = state.offer;
    state.offer = null;
    renderOffer();
    if (offer) await client.decline(offer.trip.trip_id).catch((e) => error(e.message));
  });
  for (const stage of ["arrived", "started", "completed"]) {
    $(stage).addEventListener("click", () => report(stage));
  }
  shareLocation();
  renderShift();
}

// For tests and the curious: what the app holds.
window.driverApp = {
  state,
  get map() {
    return map;
  },
  get client() {
    return client;
  },
};

start().catch((e) => error(e.message));
