// What the gateway tests get from the system test that runs them (tests/tests/system/clients.rs):
// the real gateway's address, a proxy in front of it, a control endpoint that restarts the
// gateway or stalls the proxy, and the secret the gateway checks tokens with.

import { createHmac } from "node:crypto";

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: these tests run from \`cargo xtask test\` (tests/tests/system/clients.rs)`);
  }
  return value;
}

export const GATEWAY_WS = required("GATEWAY_WS");
export const PROXY_WS = required("PROXY_WS");
const CONTROL_URL = required("CONTROL_URL");
const TOKEN_SECRET = required("TOKEN_SECRET");
/** Where the test's drivers wait: inside the matcher's regions, away from anything else. */
export const CENTER = { lat: Number(required("CENTER_LAT")), lng: Number(required("CENTER_LNG")) };

const base64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 token as an identity provider sharing the gateway's secret would issue. */
export function token(role, sub, ttlS = 3600) {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = base64url(JSON.stringify({ role, sub, exp: Math.floor(Date.now() / 1000) + ttlS }));
  const signature = createHmac("sha256", TOKEN_SECRET).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${signature}`;
}

/** Asks the system test to act: `gateway/restart`, `proxy/stall`, `proxy/restore`, `proxy/cut`. */
export async function control(action) {
  const response = await fetch(`${CONTROL_URL}/${action}`, { method: "POST" });
  if (!response.ok) throw new Error(`${action}: ${response.status} ${await response.text()}`);
}

/** Waits for `check` to return something truthy, failing after `ms`. */
export async function until(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** The next `event` the client emits that passes `filter`. */
export function next(client, event, filter = () => true, ms = 20_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`timed out waiting for ${event}`));
    }, ms);
    const stop = client.on(event, (value) => {
      if (!filter(value)) return;
      clearTimeout(timer);
      stop();
      resolve(value);
    });
  });
}

/** A point `east` metres east and `north` metres north of the centre. */
export function near(east, north = 0) {
  return {
    lat: CENTER.lat + north / 111_320,
    lng: CENTER.lng + east / (111_320 * Math.cos((CENTER.lat * Math.PI) / 180)),
  };
}
