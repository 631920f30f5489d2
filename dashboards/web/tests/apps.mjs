// Drives the rider's and the driver's apps in two phone-sized Chromium contexts (headless,
// through playwright-core) with their positions set, through a whole ride against the real
// stack. The driver's phone loses its network for ten seconds while reporting `arrived`, and
// the rider reloads the page mid-trip. Started by the system test
// `clients::the_rider_and_driver_apps_complete_a_ride_in_browsers`, which checks PostgreSQL after.
//
// Environment: BASE_URL (the gateway's pages), WS_URL (its WebSocket), RIDER_TOKEN,
// DRIVER_TOKEN, DISPATCHER_TOKEN, PICKUP and DROPOFF (`lat,lng`), MAP_STYLE_NAME (the name of
// the configured style), SCREENSHOT_DIR, CHROMIUM_BIN. Needs the SDK built and Node's
// WebSocket (`node --experimental-websocket` on Node 20).

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { devices } from "playwright-core";

import { connectDispatcher } from "../../../clients/typescript/dist/index.js";
import { env, expect, expectAccessible, launch } from "./browser.mjs";

const point = (name) => {
  const [lat, lng] = env(name).split(",").map(Number);
  return { lat, lng };
};
const base = env("BASE_URL");
const pickup = point("PICKUP");
const dropoff = point("DROPOFF");
const screenshots = env("SCREENSHOT_DIR");
const styleName = env("MAP_STYLE_NAME");
const WAIT = { timeout: 45_000 };
/** How long the driver's phone has no network. */
const OFFLINE_MS = 10_000;
/** A reason a hostile or careless client might write; the pages must show it as text. */
const MARKUP = '<img src=x onerror="window.__injected=1"><b>No cars</b> & more';

mkdirSync(screenshots, { recursive: true });
const browser = await launch();
const problems = [];

async function phone(at) {
  const context = await browser.newContext({
    ...devices["Pixel 7"],
    geolocation: { latitude: at.lat, longitude: at.lng, accuracy: 5 },
    permissions: ["geolocation"],
  });
  const page = await context.newPage();
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.text().includes("Content Security Policy")) problems.push(message.text());
  });
  return { context, page };
}

const driver = await phone({ lat: pickup.lat, lng: pickup.lng + 0.0004 });
// Parts of the map's PMTiles archive the pages fetched (206 answers to range requests).
const archiveParts = [];
driver.page.on("response", (response) => {
  if (response.url().endsWith(".pmtiles")) archiveParts.push(response.status());
});
const rider = await phone(pickup);

async function step(name, action) {
  const started = Date.now();
  try {
    const result = await action();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
    return result;
  } catch (error) {
    console.log(`FAIL ${name}: ${error.message}`);
    await driver.page.screenshot({ path: join(screenshots, "driver-failure.png") }).catch(() => {});
    await rider.page.screenshot({ path: join(screenshots, "rider-failure.png") }).catch(() => {});
    await browser.close();
    process.exit(1);
  }
}

const attr = (page, selector, name, value) =>
  page.waitForSelector(`${selector}[data-${name}="${value}"]`, WAIT);

await step("the driver's app opens and passes the accessibility audit", async () => {
  await driver.page.goto(`${base}/driver.html#token=${env("DRIVER_TOKEN")}`);
  await attr(driver.page, "#connection", "state", "open");
  expect(!driver.page.url().includes("token"), "the token left the address bar");
  await expectAccessible(driver.page, "the driver's app");
});

await step("the driver goes online with a vehicle", async () => {
  await driver.page.selectOption("#vehicle-class", "standard");
  await driver.page.tap("#go-online");
  await attr(driver.page, "#shift-state", "online", "true");
  await driver.page.waitForFunction(() => window.driverApp.state.me !== null, null, WAIT);
});

await step("the map takes its style from the gateway's settings, tiles from a PMTiles archive", async () => {
  const name = await driver.page.evaluate(() => window.driverApp.map.getStyle().name);
  expect(name === styleName, `style ${name}, expected ${styleName}`);
  await driver.page.waitForFunction(
    () => window.driverApp.map.isSourceLoaded("streets") && window.driverApp.map.areTilesLoaded(),
    null,
    WAIT,
  );
  expect(archiveParts.includes(206), `archive answers: ${archiveParts}`);
  const said = await driver.page.textContent("#error");
  expect(said === "", `the page says: ${said}`);
});

await step("the rider's app opens and passes the accessibility audit", async () => {
  await rider.page.goto(`${base}/rider.html#token=${env("RIDER_TOKEN")}`);
  await attr(rider.page, "#connection", "state", "open");
  await expectAccessible(rider.page, "the rider's app");
});

await step("the rider picks up at the device's position and taps the dropoff", async () => {
  await rider.page.tap("#use-position");
  await rider.page.waitForFunction(() => window.riderApp.state.pickup !== null, null, WAIT);
  await rider.page.waitForFunction(() => !window.riderApp.map.isMoving(), null, WAIT);
  const box = await rider.page.locator("#map").boundingBox();
  const at = await rider.page.evaluate(
    ([lng, lat]) => window.riderApp.map.project([lng, lat]),
    [dropoff.lng, dropoff.lat],
  );
  expect(at.x > 0 && at.x < box.width && at.y > 0 && at.y < box.height, "the dropoff is on screen");
  await rider.page.touchscreen.tap(box.x + at.x, box.y + at.y);
  const chosen = await rider.page.evaluate(() => window.riderApp.state.dropoff);
  expect(Math.abs(chosen.lat - dropoff.lat) < 0.002 && Math.abs(chosen.lng - dropoff.lng) < 0.002,
    `dropoff ${JSON.stringify(chosen)}`);
  await rider.page.waitForFunction(
    () => window.riderApp.map.queryRenderedFeatures({ layers: ["points"] }).length === 2,
    null,
    WAIT,
  );
});

await step("the rider requests; the driver is offered the job with a countdown and accepts", async () => {
  await rider.page.tap("#request");
  await rider.page.waitForSelector("#ride-state:is([data-state=requested],[data-state=offered])", WAIT);
  await driver.page.waitForSelector("#offer:not([hidden])", WAIT);
  const left = Number(await driver.page.textContent("#offer-countdown"));
  expect(left > 0, `countdown ${left}`);
  await driver.page.tap("#accept");
  await attr(driver.page, "#job-state", "state", "accepted");
  await attr(rider.page, "#ride-state", "state", "accepted");
});

await step("the rider watches the driver approach with its ETA", async () => {
  await driver.context.setGeolocation({ latitude: pickup.lat, longitude: pickup.lng + 0.0002, accuracy: 5 });
  await rider.page.waitForFunction(
    () => document.getElementById("ride-eta").textContent.startsWith("Arrives in"),
    null,
    WAIT,
  );
  await rider.page.waitForFunction(
    () => window.riderApp.map.queryRenderedFeatures({ layers: ["vehicle"] }).length === 1,
    null,
    WAIT,
  );
  const driverLine = await rider.page.textContent("#ride-driver");
  expect(driverLine.includes("apps-driver"), driverLine);
  await rider.page.screenshot({ path: join(screenshots, "rider.png") });
  await driver.page.screenshot({ path: join(screenshots, "driver.png") });
});

await step(`the driver reports arrived without signal; it is delivered once back ${OFFLINE_MS / 1000} s later`, async () => {
  await driver.context.setOffline(true);
  await attr(driver.page, "#connection", "state", "reconnecting");
  await driver.page.tap("#arrived");
  await driver.page.waitForFunction(
    () => document.getElementById("queued").textContent.startsWith("No signal"),
    null,
    WAIT,
  );
  await driver.page.screenshot({ path: join(screenshots, "driver-offline.png") });
  // The phone stays without network for a while (a tunnel), not waiting on anything.
  await driver.page.waitForTimeout(OFFLINE_MS);
  const meanwhile = await rider.page.getAttribute("#ride-state", "data-state");
  expect(meanwhile === "accepted", `the rider saw ${meanwhile} before the report was sent`);
  await driver.context.setOffline(false);
  await attr(driver.page, "#connection", "state", "open");
  await attr(driver.page, "#job-state", "state", "arrived");
  await driver.page.waitForFunction(() => document.getElementById("queued").textContent === "", null, WAIT);
  await attr(rider.page, "#ride-state", "state", "arrived");
  const reports = await driver.page.evaluate(() => window.driverApp.state.reports);
  expect(reports === 1, `${reports} reports acknowledged`);
});

await step("the rider reloads the page and finds the trip again", async () => {
  await rider.page.reload();
  await attr(rider.page, "#ride-state", "state", "arrived");
  expect(await rider.page.isHidden("#plan"), "the planning form is hidden during a ride");
});

await step("the driver starts, drives to the dropoff and completes; the rider sees each", async () => {
  await driver.page.tap("#started");
  await attr(rider.page, "#ride-state", "state", "in_progress");
  await driver.context.setGeolocation({ latitude: dropoff.lat, longitude: dropoff.lng, accuracy: 5 });
  await rider.page.waitForFunction(
    ([lat, lng]) => {
      const at = window.riderApp.state.driverAt;
      return at && Math.abs(at.lat - lat) < 0.0005 && Math.abs(at.lng - lng) < 0.0005;
    },
    [dropoff.lat, dropoff.lng],
    WAIT,
  );
  await driver.page.tap("#completed");
  await attr(driver.page, "#job-state", "state", "completed");
  await attr(rider.page, "#ride-state", "state", "completed");
  expect(await rider.page.isVisible("#again"), "the rider can book again");
});

await step("a ride cancelled by a dispatcher shows its reason, markup and all, as text", async () => {
  await driver.page.tap("#go-offline");
  await attr(driver.page, "#shift-state", "online", "false");
  await rider.page.tap("#again");
  await rider.page.tap("#use-position");
  await rider.page.waitForFunction(() => window.riderApp.state.pickup !== null, null, WAIT);
  const box = await rider.page.locator("#map").boundingBox();
  const at = await rider.page.evaluate(
    ([lng, lat]) => window.riderApp.map.project([lng, lat]),
    [dropoff.lng, dropoff.lat],
  );
  await rider.page.touchscreen.tap(box.x + at.x, box.y + at.y);
  await rider.page.tap("#request");
  await attr(rider.page, "#ride-state", "state", "requested");
  const tripId = await rider.page.evaluate(() => window.riderApp.state.trip.trip_id);
  // The dispatcher's console, through the SDK in Node.
  const dispatcher = connectDispatcher({ url: env("WS_URL"), token: env("DISPATCHER_TOKEN") });
  try {
    await dispatcher.cancel(tripId, MARKUP);
  } finally {
    dispatcher.close();
  }
  await attr(rider.page, "#ride-state", "state", "cancelled");
  const shown = await rider.page.textContent("#ride-state");
  expect(shown.includes(MARKUP), `shown: ${shown}`);
  const injected = await rider.page.evaluate(
    () => window.__injected === undefined && document.querySelector("#ride-state *") === null,
  );
  expect(injected, "the reason was rendered as markup");
});

await step("no page error and no Content Security Policy violation", async () => {
  expect(problems.length === 0, problems.join("\n"));
});

console.log(JSON.stringify({ ride: "completed", offline_ms: OFFLINE_MS }));
await browser.close();
