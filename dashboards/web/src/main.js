// The dispatcher's dashboard: a live map of the fleet fed by the gateway's WebSocket, the trip
// history from the trips API, and the dispatcher's actions (cancel, assign).
//
// Everything a client supplied (ids, names, reasons) reaches the page through textContent or
// map labels, never through innerHTML.

import { cellToBoundary } from "h3-js";
import { connectDispatcher } from "../../../clients/typescript/src/index.ts";
import { $, readToken } from "./app.js";
import { emptyCollection, makeMap, maplibregl } from "./map.js";
import "./style.css";

/// A vehicle with no position for this long is drawn as stale, and dropped after `FORGET_MS`.
const STALE_MS = 30_000;
const FORGET_MS = 300_000;
const ACTIVE = new Set(["requested", "offered", "accepted", "arrived", "in_progress"]);
const OPEN = new Set(["requested", "offered"]);
const STATUS_COLOURS = {
  available: "#1a9850",
  offered: "#f39c12",
  on_trip: "#2166ac",
  stale: "#999999",
  offline: "#cccccc",
};

const state = {
  token: null,
  config: null,
  client: null,
  connected: false,
  vehicles: new Map(),
  cells: new Map(),
  // Active trips on the map, by id.
  trips: new Map(),
  // Each trip's latest version seen (live or polled) and when it was seen (local ms): an older
  // version never replaces a newer one, and the poll of active trips drops a held trip it does
  // not list unless it was seen after the poll was sent.
  versions: new Map(),
  seenAt: new Map(),
  selected: null,
  route: [],
  dirty: true,
  listed: [],
  zones: [],
  // The corners of a zone being drawn, [lng, lat]; null when not drawing.
  sketch: null,
};

function showLogin(message) {
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message ?? "";
}

// ---- the connection to the gateway: the SDK's session, kept across lost connections ----

const BADGES = {
  connecting: ["connecting", "connecting"],
  open: ["live", "up"],
  reconnecting: ["reconnecting", "down"],
  closed: ["disconnected", "down"],
};

function setConnection(label, kind) {
  const el = $("connection");
  el.textContent = label;
  el.dataset.state = kind;
  el.className = `status status-${kind}`;
}

/** A command through the session; resolves on its ack, rejects with the server's reason. */
function send(message) {
  return state.client.connection.command(message);
}

function connect() {
  const client = connectDispatcher({ url: state.config.ws_url, token: state.token });
  state.client = client;
  client.on("state", (connection) => setConnection(...BADGES[connection]));
  client.on("problem", (problem) => {
    // A refused token is not one to retry with: the dispatcher logs in again.
    if (problem.code === "unauthorized") {
      client.close();
      sessionStorage.removeItem("dispatch-token");
      showLogin(`The gateway refused the token: ${problem.message}`);
    } else if (problem.code === "forbidden") {
      showLogin("This token is not a dispatcher's.");
    }
  });
  client.on("welcome", () => {
    // The first session subscribes; later ones get the latest viewport from the SDK.
    if (state.connected) return;
    state.connected = true;
    subscribeViewport();
  });
  client.on("vehicles", (message) => {
    for (const v of message.vehicles) state.vehicles.set(v.driver_id, v);
    state.cells.clear();
    state.dirty = true;
  });
  client.on("cell_aggregates", (message) => {
    for (const c of message.cells) state.cells.set(c.cell, c);
    state.vehicles.clear();
    state.dirty = true;
  });
  client.on("trip_update", (message) => onTrip(message.trip));
}

/** Takes `trip` unless a newer version of it was seen; whether it was taken. */
function onTrip(trip) {
  if ((state.versions.get(trip.trip_id) ?? 0) >= trip.version) return false;
  state.versions.set(trip.trip_id, trip.version);
  state.seenAt.set(trip.trip_id, Date.now());
  if (ACTIVE.has(trip.state)) state.trips.set(trip.trip_id, trip);
  else state.trips.delete(trip.trip_id);
  state.dirty = true;
  const row = document.querySelector(`tr[data-trip-id="${CSS.escape(trip.trip_id)}"]`);
  if (row) {
    row.children[1].textContent = trip.state;
    row.children[3].textContent = trip.driver_id ?? "";
  }
  if (state.selected === trip.trip_id) showDetail(trip.trip_id);
  return true;
}

/// Most active trips one poll asks for.
const ACTIVE_LIMIT = 500;

// The live updates cover the viewport only, so the map's trips are set from the trips API's
// active ones every few seconds: a trip that ended out of view leaves the map at the next
// poll. A held trip the poll does not list is dropped unless it was seen after the poll was
// sent (it started meanwhile), or the poll was cut off at its limit.
async function loadActive() {
  const sent = Date.now();
  let active;
  try {
    active = await api(`api/trips?state=active&limit=${ACTIVE_LIMIT}`);
  } catch {
    return;
  }
  const listed = new Set(active.map((t) => t.trip_id));
  for (const trip of active) onTrip(trip);
  if (active.length < ACTIVE_LIMIT) {
    for (const id of [...state.trips.keys()]) {
      if (!listed.has(id) && (state.seenAt.get(id) ?? 0) < sent) {
        state.trips.delete(id);
        state.dirty = true;
      }
    }
  }
  // Forget what is neither held nor recent.
  for (const [id, at] of state.seenAt) {
    if (!state.trips.has(id) && at < sent - 60_000) {
      state.seenAt.delete(id);
      state.versions.delete(id);
    }
  }
}

// ---- the map ----

let map;

async function initMap() {
  map = await makeMap(
    "map",
    state.config,
    {
      cells: { type: "geojson", data: emptyCollection() },
      trips: { type: "geojson", data: emptyCollection() },
      requests: { type: "geojson", data: emptyCollection() },
      vehicles: { type: "geojson", data: emptyCollection() },
      route: { type: "geojson", data: emptyCollection() },
      zones: { type: "geojson", data: emptyCollection() },
      sketch: { type: "geojson", data: emptyCollection() },
    },
    [
        {
          id: "cells",
          type: "fill",
          source: "cells",
          paint: {
            "fill-color": [
              "interpolate",
              ["linear"],
              ["get", "pressure"],
              0, "#1a9850",
              1, "#fee08b",
              3, "#d73027",
            ],
            "fill-opacity": ["min", 0.7, ["+", 0.15, ["/", ["get", "vehicles"], 40]]],
            "fill-outline-color": "#666666",
          },
        },
        {
          id: "zones",
          type: "fill",
          source: "zones",
          paint: {
            "fill-color": ["match", ["get", "kind"], "no_pickup", "#d73027", "service_area", "#1a9850", "queue", "#4575b4", "#984ea3"],
            "fill-opacity": ["match", ["get", "kind"], "service_area", 0.06, 0.25],
            "fill-outline-color": "#333333",
          },
        },
        {
          id: "sketch",
          type: "line",
          source: "sketch",
          paint: { "line-color": "#000000", "line-width": 2, "line-dasharray": [1, 1] },
        },
        {
          id: "sketch-points",
          type: "circle",
          source: "sketch",
          filter: ["==", ["geometry-type"], "Point"],
          paint: { "circle-radius": 4, "circle-color": "#000000" },
        },
        {
          id: "trips",
          type: "line",
          source: "trips",
          paint: { "line-color": "#2166ac", "line-width": 2, "line-dasharray": [2, 1] },
        },
        {
          id: "route",
          type: "line",
          source: "route",
          filter: ["==", ["geometry-type"], "LineString"],
          paint: { "line-color": "#762a83", "line-width": 4 },
        },
        {
          id: "route-head",
          type: "circle",
          source: "route",
          filter: ["==", ["geometry-type"], "Point"],
          paint: { "circle-radius": 7, "circle-color": "#762a83", "circle-stroke-color": "#fff", "circle-stroke-width": 2 },
        },
        {
          id: "requests",
          type: "circle",
          source: "requests",
          paint: {
            "circle-radius": 6,
            "circle-color": "#ffffff",
            "circle-stroke-color": "#d73027",
            "circle-stroke-width": 3,
          },
        },
        {
          id: "vehicles",
          type: "circle",
          source: "vehicles",
          paint: {
            "circle-radius": ["interpolate", ["linear"], ["zoom"], 10, 3, 16, 7],
            "circle-color": ["get", "colour"],
            "circle-stroke-color": "#ffffff",
            "circle-stroke-width": 1,
          },
        },
    ],
    (problem) => ($("action-result").textContent = problem),
  );
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
  map.on("moveend", subscribeViewport);
  map.on("click", "vehicles", (event) => {
    if (state.sketch) return;
    const f = event.features[0];
    const box = document.createElement("div");
    box.textContent = `${f.properties.driver_id} · ${f.properties.status}`;
    new maplibregl.Popup().setLngLat(event.lngLat).setDOMContent(box).addTo(map);
  });
  map.on("click", "requests", (event) => {
    if (!state.sketch) selectTrip(event.features[0].properties.trip_id);
  });
  map.on("click", (event) => {
    if (!state.sketch) return;
    state.sketch.push([event.lngLat.lng, event.lngLat.lat]);
    drawSketch();
  });
  map.on("load", () => {
    state.dirty = true;
    requestAnimationFrame(render);
  });
}

function subscribeViewport() {
  if (!state.connected || !map) return;
  const b = map.getBounds();
  // The SDK renews the latest viewport on every new session.
  state.client
    .subscribeViewport(
      {
        south: Math.max(-90, b.getSouth()),
        west: Math.max(-180, b.getWest()),
        north: Math.min(90, b.getNorth()),
        east: Math.min(180, b.getEast()),
      },
      map.getZoom(),
    )
    .catch((error) => setConnection(`live · ${error.message}`, "up"));
}

function vehicleStatus(v, now) {
  if (now - v.ts > STALE_MS) return "stale";
  return v.status;
}

function render() {
  requestAnimationFrame(render);
  if (!state.dirty || !map.isStyleLoaded()) return;
  state.dirty = false;
  const now = Date.now();
  const vehicles = [];
  const byStatus = {};
  for (const [id, v] of state.vehicles) {
    if (now - v.ts > FORGET_MS || v.status === "offline") {
      state.vehicles.delete(id);
      continue;
    }
    const status = vehicleStatus(v, now);
    byStatus[status] = (byStatus[status] ?? 0) + 1;
    vehicles.push({
      type: "Feature",
      geometry: { type: "Point", coordinates: [v.lng, v.lat] },
      properties: { driver_id: v.driver_id, status, colour: STATUS_COLOURS[status] ?? "#000" },
    });
  }
  map.getSource("vehicles").setData({ type: "FeatureCollection", features: vehicles });

  const cells = [];
  for (const c of state.cells.values()) {
    let ring;
    try {
      ring = cellToBoundary(c.cell, true);
    } catch {
      continue;
    }
    cells.push({
      type: "Feature",
      geometry: { type: "Polygon", coordinates: [ring] },
      properties: {
        vehicles: c.vehicles,
        pressure: c.open_requests / Math.max(1, c.available),
      },
    });
  }
  map.getSource("cells").setData({ type: "FeatureCollection", features: cells });

  const requests = [];
  const lines = [];
  for (const t of state.trips.values()) {
    const pickup = [t.pickup.lng, t.pickup.lat];
    const dropoff = [t.dropoff.lng, t.dropoff.lat];
    if (OPEN.has(t.state)) {
      requests.push({
        type: "Feature",
        geometry: { type: "Point", coordinates: pickup },
        properties: { trip_id: t.trip_id },
      });
    } else {
      lines.push({
        type: "Feature",
        geometry: { type: "LineString", coordinates: [pickup, dropoff] },
        properties: { trip_id: t.trip_id },
      });
    }
  }
  map.getSource("requests").setData({ type: "FeatureCollection", features: requests });
  map.getSource("trips").setData({ type: "FeatureCollection", features: lines });

  const summary = Object.entries(byStatus)
    .map(([k, n]) => `${n} ${k.replace("_", " ")}`)
    .join(" · ");
  const cellSummary = cells.length ? `${cells.length} cells` : "";
  $("counts").textContent = [summary, cellSummary, `${requests.length} open requests`, `${lines.length} active trips`]
    .filter(Boolean)
    .join(" · ");
}

// Age stale vehicles even when nothing new arrives.
setInterval(() => {
  state.dirty = true;
}, 2_000);

// ---- trips from the API ----

async function api(path, method = "GET", payload = undefined) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: payload === undefined ? undefined : JSON.stringify(payload),
  });
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    showLogin(body?.message ?? "unauthorised");
    throw new Error("unauthorised");
  }
  if (!response.ok) throw new Error(body?.message ?? `HTTP ${response.status}`);
  return body;
}

function formatTime(ms) {
  return new Date(ms).toLocaleTimeString();
}

async function loadTrips(event) {
  event?.preventDefault();
  const form = new FormData($("filters"));
  const query = new URLSearchParams({ limit: "100" });
  for (const key of ["state", "driver_id", "rider_id"]) {
    const value = String(form.get(key) ?? "").trim();
    if (value) query.set(key, value);
  }
  for (const key of ["from", "to"]) {
    const value = String(form.get(key) ?? "");
    if (value) query.set(key, String(new Date(value).getTime()));
  }
  $("trips-error").textContent = "";
  let trips;
  try {
    trips = await api(`api/trips?${query}`);
  } catch (error) {
    $("trips-error").textContent = error.message;
    return;
  }
  state.listed = trips;
  const body = $("trips").tBodies[0];
  body.replaceChildren();
  for (const trip of trips) {
    onTrip(trip);
    const row = document.createElement("tr");
    row.dataset.tripId = trip.trip_id;
    row.classList.toggle("selected", trip.trip_id === state.selected);
    for (const text of [formatTime(trip.created_at), trip.state, trip.rider_id, trip.driver_id ?? ""]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    row.addEventListener("click", () => selectTrip(trip.trip_id));
    body.append(row);
  }
}

function selectTrip(tripId) {
  state.selected = tripId;
  for (const row of $("trips").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.tripId === tripId);
  }
  showDetail(tripId);
}

async function showDetail(tripId) {
  let detail;
  try {
    detail = await api(`api/trips/${encodeURIComponent(tripId)}`);
  } catch (error) {
    $("action-result").textContent = error.message;
    return;
  }
  if (state.selected !== tripId) return;
  const { trip } = detail;
  $("detail").hidden = false;
  $("detail").dataset.tripId = trip.trip_id;
  $("detail-id").textContent = trip.trip_id;
  $("detail-state").textContent = trip.state;
  $("detail-rider").textContent = trip.rider_id;
  $("detail-driver").textContent = trip.driver_id ?? "none";
  $("detail-driver-name").textContent = detail.driver_name ?? "";
  $("detail-ended").textContent = trip.ended_by ? `${trip.ended_by}: ${trip.end_reason ?? ""}` : "";
  $("cancel").disabled = !ACTIVE.has(trip.state);
  $("assign").disabled = !OPEN.has(trip.state);
  const timeline = $("timeline");
  timeline.replaceChildren();
  for (const e of detail.events) {
    const item = document.createElement("li");
    const who = e.actor_id ? `${e.actor} ${e.actor_id}` : e.actor;
    item.textContent = `${formatTime(e.at)} ${e.from ?? "·"} → ${e.to} by ${who}${e.reason ? ` (${e.reason})` : ""}${whereReported(e)}`;
    if (e.flagged) {
      item.classList.add("flagged");
      item.title = "completed far from the dropoff";
    }
    timeline.append(item);
  }
  state.route = detail.route.map((p) => [p.lng, p.lat]);
  drawRoute(state.route);
}

// Where a driver reported a stage, against the place it happens: the pickup, or the dropoff
// for a completion.
function whereReported(e) {
  if (e.distance_m == null) return "";
  const place = e.to === "completed" ? "dropoff" : "pickup";
  const distance = e.distance_m >= 1000 ? `${(e.distance_m / 1000).toFixed(1)} km` : `${Math.round(e.distance_m)} m`;
  return `, ${distance} from the ${place}${e.flagged ? " ⚑" : ""}`;
}

function drawRoute(points, head) {
  const features = [];
  if (points.length > 1) {
    features.push({ type: "Feature", geometry: { type: "LineString", coordinates: points }, properties: {} });
  }
  if (head) features.push({ type: "Feature", geometry: { type: "Point", coordinates: head }, properties: {} });
  map.getSource("route")?.setData({ type: "FeatureCollection", features });
}

function replayRoute() {
  const points = state.route;
  if (points.length < 2) {
    $("action-result").textContent = "no route recorded for this trip";
    return;
  }
  map.fitBounds(
    points.reduce((b, p) => b.extend(p), new maplibregl.LngLatBounds(points[0], points[0])),
    { padding: 60, maxZoom: 15 },
  );
  let i = 1;
  const step = () => {
    if (i > points.length) return;
    drawRoute(points.slice(0, i), points[i - 1]);
    i += 1;
    setTimeout(step, Math.max(10, 3_000 / points.length));
  };
  step();
}

// ---- zones ----

async function loadZones() {
  let zones;
  try {
    zones = await api("api/zones");
  } catch (error) {
    $("zone-error").textContent = error.message;
    return;
  }
  state.zones = zones;
  map.getSource("zones")?.setData({
    type: "FeatureCollection",
    features: zones.map((z) => ({ type: "Feature", geometry: z.geometry, properties: { kind: z.kind, name: z.name } })),
  });
  const list = $("zones");
  list.replaceChildren();
  for (const zone of zones) {
    const item = document.createElement("li");
    item.dataset.zoneId = zone.zone_id;
    const label = document.createElement("span");
    label.textContent = `${zone.name} (${zone.kind.replace("_", " ")})`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Delete";
    remove.addEventListener("click", () => deleteZone(zone.zone_id));
    item.append(label, remove);
    list.append(item);
  }
}

function drawSketch() {
  const points = state.sketch ?? [];
  const features = points.map((p) => ({ type: "Feature", geometry: { type: "Point", coordinates: p }, properties: {} }));
  if (points.length > 1) {
    const ring = points.length > 2 ? [...points, points[0]] : points;
    features.push({ type: "Feature", geometry: { type: "LineString", coordinates: ring }, properties: {} });
  }
  map.getSource("sketch")?.setData({ type: "FeatureCollection", features });
  $("zone-save").disabled = points.length < 3;
  $("zone-hint").textContent = state.sketch
    ? `${points.length} point${points.length === 1 ? "" : "s"}: click the map to add corners, then Save`
    : "";
}

function startSketch() {
  state.sketch = [];
  $("zone-error").textContent = "";
  $("map").classList.add("drawing");
  $("zone-discard").disabled = false;
  drawSketch();
}

function endSketch() {
  state.sketch = null;
  $("map").classList.remove("drawing");
  $("zone-discard").disabled = true;
  drawSketch();
}

async function saveZone(event) {
  event.preventDefault();
  const points = state.sketch ?? [];
  if (points.length < 3) return;
  const zone = {
    name: $("zone-name").value.trim(),
    kind: $("zone-kind").value,
    geometry: { type: "Polygon", coordinates: [[...points, points[0]]] },
  };
  $("zone-error").textContent = "";
  try {
    await api("api/zones", "POST", zone);
  } catch (error) {
    // The server says what to fix (a self-intersecting outline, too many corners); the
    // sketch stays so it can be discarded and drawn again.
    $("zone-error").textContent = error.message;
    return;
  }
  $("zone-name").value = "";
  endSketch();
  await loadZones();
}

async function deleteZone(zoneId) {
  try {
    await api(`api/zones/${encodeURIComponent(zoneId)}`, "DELETE");
  } catch (error) {
    $("zone-error").textContent = error.message;
  }
  await loadZones();
}

async function act(message, done) {
  $("action-result").textContent = "…";
  try {
    await send(message);
    $("action-result").textContent = done;
  } catch (error) {
    $("action-result").textContent = error.message;
  }
  if (state.selected) showDetail(state.selected);
}

// ---- start ----

async function start() {
  state.token = readToken("dispatch-token");
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("dispatch-token", $("token").value.trim());
    location.reload();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem("dispatch-token");
    location.reload();
  });
  if (!state.token) {
    showLogin();
    return;
  }
  state.config = await (await fetch("dashboard-config.json")).json();
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  await initMap();
  connect();
  $("filters").addEventListener("submit", loadTrips);
  $("cancel").addEventListener("click", () =>
    act({ type: "cancel_trip", trip_id: state.selected, reason: "cancelled by dispatcher" }, "cancelled"),
  );
  $("assign").addEventListener("click", () =>
    act(
      { type: "assign_driver", trip_id: state.selected, driver_id: $("assign-driver").value.trim() },
      "assigned",
    ),
  );
  $("replay").addEventListener("click", replayRoute);
  $("zone-draw").addEventListener("click", startSketch);
  $("zone-discard").addEventListener("click", endSketch);
  $("zone-form").addEventListener("submit", saveZone);
  map.on("load", loadZones);
  setInterval(loadZones, 10_000);
  await Promise.all([loadTrips(), loadActive()]);
  setInterval(loadTrips, 5_000);
  setInterval(loadActive, 5_000);
}

// For tests and the curious: what the page shows right now.
window.dispatchDashboard = {
  renderedVehicles: () => (map ? map.queryRenderedFeatures({ layers: ["vehicles"] }).length : 0),
  renderedCells: () => (map ? map.queryRenderedFeatures({ layers: ["cells"] }).length : 0),
  renderedZones: () => (map ? map.queryRenderedFeatures({ layers: ["zones"] }).length : 0),
  get map() {
    return map;
  },
  state,
};

start();
