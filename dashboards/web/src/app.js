// What the rider's and the driver's apps share: the token (from the link's fragment or typed
// in, kept for the tab's life so a reload resumes), the gateway's settings, the map with the
// trip's points, and the connection badge. Client-supplied text is only ever set as text.

import { emptyCollection, makeMap } from "./map.js";

export const $ = (id) => document.getElementById(id);

/** The token for `key` from `#token=` (then removed from the address bar) or this tab's storage. */
export function readToken(key) {
  const hash = new URLSearchParams(location.hash.slice(1));
  const fromHash = hash.get("token");
  if (fromHash) {
    sessionStorage.setItem(key, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
    return fromHash;
  }
  return sessionStorage.getItem(key);
}

/**
 * Opens the app: with a token, shows the app and its log-out button and resolves with the token
 * and the gateway's settings; without one, shows the login form and resolves with null.
 */
export async function openApp(key) {
  const token = readToken(key);
  if (!token) {
    $("login").hidden = false;
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(key, $("token").value.trim());
      location.reload();
    });
    return null;
  }
  const config = await (await fetch("dashboard-config.json")).json();
  $("app").hidden = false;
  $("logout").hidden = false;
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(key);
    location.reload();
  });
  return { token, config };
}

const BADGES = {
  connecting: ["connecting", "connecting"],
  open: ["online", "up"],
  reconnecting: ["offline: reconnecting", "down"],
  closed: ["disconnected", "down"],
};

/** Keeps the connection badge in step with the SDK's connection state. */
export function showConnection(client) {
  const badge = $("connection");
  const show = (state) => {
    const [label, kind] = BADGES[state];
    badge.textContent = label;
    badge.dataset.state = state;
    badge.className = `status status-${kind}`;
  };
  show(client.connection.state);
  client.on("state", show);
}

const POINT_COLOURS = { pickup: "#1a9850", dropoff: "#d73027", me: "#2166ac", driver: "#2166ac" };

/** The map with three point layers: `points` (pickup, dropoff), `vehicle` (a driver). */
export async function tripMap(config, onProblem) {
  const map = await makeMap(
    "map",
    config,
    {
      points: { type: "geojson", data: emptyCollection() },
      vehicle: { type: "geojson", data: emptyCollection() },
    },
    [
      {
        id: "points",
        type: "circle",
        source: "points",
        paint: {
          "circle-radius": 9,
          "circle-color": ["get", "colour"],
          "circle-stroke-color": "#ffffff",
          "circle-stroke-width": 3,
        },
      },
      {
        id: "vehicle",
        type: "circle",
        source: "vehicle",
        paint: {
          "circle-radius": 8,
          "circle-color": ["get", "colour"],
          "circle-stroke-color": "#ffffff",
          "circle-stroke-width": 2,
        },
      },
    ],
    onProblem,
  );
  await new Promise((resolve) => (map.loaded() ? resolve() : map.once("load", resolve)));
  return map;
}

function point(kind, p) {
  return {
    type: "Feature",
    properties: { kind, colour: POINT_COLOURS[kind] },
    geometry: { type: "Point", coordinates: [p.lng, p.lat] },
  };
}

/** Draws the pickup and dropoff (either may be null). */
export function showPoints(map, pickup, dropoff) {
  const features = [];
  if (pickup) features.push(point("pickup", pickup));
  if (dropoff) features.push(point("dropoff", dropoff));
  map.getSource("points").setData({ type: "FeatureCollection", features });
}

/** Draws the vehicle (a driver's own position, or a rider's driver), or none. */
export function showVehicle(map, at, kind = "driver") {
  const features = at ? [point(kind, at)] : [];
  map.getSource("vehicle").setData({ type: "FeatureCollection", features });
}

/** "3 min" or "under a minute". */
export function minutes(seconds) {
  return seconds < 60 ? "under a minute" : `${Math.round(seconds / 60)} min`;
}

/** The browser's position, once. */
export function devicePosition() {
  return new Promise((resolve, reject) => {
    if (!navigator.geolocation) return reject(new Error("this device has no location"));
    navigator.geolocation.getCurrentPosition(
      (p) => resolve({ lat: p.coords.latitude, lng: p.coords.longitude }),
      (e) => reject(new Error(e.message || "location refused")),
      { enableHighAccuracy: true, timeout: 10_000 },
    );
  });
}
