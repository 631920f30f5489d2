// Drives the dashboard in Debian's headless Chromium through playwright-core. Started by the
// system test `dashboard::the_dispatcher_dashboard_*`, which runs the stack and the simulator and
// then checks PostgreSQL; this script checks what the page shows and does.
//
// Environment: DASHBOARD_URL (the page), DISPATCHER_TOKEN, TRIP_ID (a trip to cancel, whose
// driver's name is DRIVER_NAME), FLAGGED_TRIP_ID (a trip of rider `rider-far`, completed far
// from its dropoff),
// ZONE_NAME (the name to draw a zone under, markup to be shown as text), SCREENSHOT_DIR,
// CHROMIUM_BIN.

import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { connectDispatcher } from "../../../clients/typescript/dist/index.js";
import { env, expect, expectAccessible, launch } from "./browser.mjs";

const url = env("DASHBOARD_URL");
const token = env("DISPATCHER_TOKEN");
const tripId = env("TRIP_ID");
const driverName = env("DRIVER_NAME");
const flaggedTripId = env("FLAGGED_TRIP_ID");
const zoneName = env("ZONE_NAME");
const screenshots = env("SCREENSHOT_DIR");
const WAIT = { timeout: 45_000 };

mkdirSync(screenshots, { recursive: true });
const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const pageErrors = [];
page.on("pageerror", (error) => pageErrors.push(error.message));

async function step(name, action) {
  const started = Date.now();
  try {
    const result = await action();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
    return result;
  } catch (error) {
    console.log(`FAIL ${name}: ${error.message}`);
    await page.screenshot({ path: join(screenshots, "failure.png") }).catch(() => {});
    await browser.close();
    process.exit(1);
  }
}

await step("the page asks for a token", async () => {
  await page.goto(url);
  await page.waitForSelector("#login:not([hidden])", WAIT);
});

await step("the login page passes the accessibility audit", async () => {
  await expectAccessible(page, "the login page");
});

await step("a token the gateway refuses brings the login back, saying why", async () => {
  await page.fill("#token", `${token.slice(0, -4)}AAAA`);
  await page.click("#login button[type=submit]");
  await page.waitForFunction(
    () => document.getElementById("login-error").textContent.includes("refused the token"),
    null,
    WAIT,
  );
  expect(await page.isVisible("#login"), "the login form is shown again");
});

await step("logging in with a dispatcher token", async () => {
  await page.fill("#token", token);
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#app:not([hidden])", WAIT);
  await page.waitForSelector('#connection[data-state="up"]', WAIT);
});

const vehicles = await step("vehicles appear on the map", async () => {
  await page.waitForFunction(() => window.dispatchDashboard.renderedVehicles() > 0, null, WAIT);
  return page.evaluate(() => window.dispatchDashboard.renderedVehicles());
});

await step("the trip appears in the list", async () => {
  await page.waitForSelector(`tr[data-trip-id="${tripId}"]`, WAIT);
});

await step("the live dashboard passes the accessibility audit", async () => {
  await expectAccessible(page, "the dashboard");
});

await step("the driver's name shows as text, not markup", async () => {
  await page.click(`tr[data-trip-id="${tripId}"]`);
  await page.waitForFunction(
    (id) => document.getElementById("detail-id")?.textContent === id,
    tripId,
    WAIT,
  );
  const shown = await page.textContent("#detail-driver-name");
  expect(shown === driverName, `driver name shown as ${JSON.stringify(shown)}`);
  const injected = await page.evaluate(() => ({
    ran: window.__injected ?? null,
    elements: document.querySelectorAll("#detail img, #detail b, #detail script").length,
  }));
  expect(injected.ran === null, "markup in the name ran script");
  expect(injected.elements === 0, `markup in the name made ${injected.elements} elements`);
});

await page.screenshot({ path: join(screenshots, "dashboard.png") });

await step("cancelling the trip from the page", async () => {
  await page.click("#cancel");
  await page.waitForFunction(
    () => document.getElementById("detail-state").textContent === "cancelled",
    null,
    WAIT,
  );
});

await step("a completion far from the dropoff is flagged in the timeline", async () => {
  await page.fill("#filters input[name=rider_id]", "rider-far");
  await page.click("#filters button[type=submit]");
  await page.waitForSelector(`tr[data-trip-id="${flaggedTripId}"]`, WAIT);
  await page.click(`tr[data-trip-id="${flaggedTripId}"]`);
  const flagged = await page.waitForSelector("#timeline li.flagged", WAIT);
  const text = await flagged.textContent();
  expect(/→ completed .* km from the dropoff ⚑/.test(text), `flagged entry reads ${JSON.stringify(text)}`);
  const unflagged = await page.$$eval("#timeline li:not(.flagged)", (items) => items.map((i) => i.textContent));
  expect(
    unflagged.some((t) => / m from the pickup$/.test(t)),
    `no arrival near the pickup in ${JSON.stringify(unflagged)}`,
  );
});

// Clicks the map at fractions of its width and height.
async function clickMap(points) {
  const box = await page.locator("#map").boundingBox();
  for (const [fx, fy] of points) {
    await page.mouse.click(box.x + box.width * fx, box.y + box.height * fy);
  }
}

async function drawZone(name, kind, corners) {
  await page.fill("#zone-name", name);
  await page.selectOption("#zone-kind", kind);
  await page.click("#zone-draw");
  await clickMap(corners);
  await page.waitForFunction((n) => document.getElementById("zone-hint").textContent.startsWith(`${n} points`), corners.length, WAIT);
  await page.click("#zone-save");
}

const listedZones = () => page.$$eval("#zones li span", (items) => items.map((i) => i.textContent));

await step("a dispatcher draws a no-pickup zone on the map; its name shows as text", async () => {
  await drawZone(zoneName, "no_pickup", [[0.40, 0.40], [0.60, 0.40], [0.60, 0.60], [0.40, 0.60]]);
  await page.waitForFunction(
    (name) => [...document.querySelectorAll("#zones li span")].some((s) => s.textContent === `${name} (no pickup)`),
    zoneName,
    WAIT,
  );
  await page.waitForFunction(() => window.dispatchDashboard.renderedZones() > 0, null, WAIT);
  const markup = await page.evaluate(() => document.querySelectorAll("#zones b, #zones img, #zones script").length);
  expect(markup === 0, `the zone's name made ${markup} elements`);
});

await page.screenshot({ path: join(screenshots, "dashboard-zone.png") });

await step("a self-intersecting outline is refused with the reason, and discarded", async () => {
  await drawZone("Bow tie", "watch", [[0.25, 0.25], [0.35, 0.35], [0.35, 0.25], [0.25, 0.35]]);
  await page.waitForFunction(() => /self-intersection/.test(document.getElementById("zone-error").textContent), null, WAIT);
  await page.click("#zone-discard");
  const zones = await listedZones();
  expect(!zones.some((z) => z.startsWith("Bow tie")), `the refused zone is listed: ${JSON.stringify(zones)}`);
});

await step("a zone drawn and deleted again", async () => {
  await drawZone("Temporary", "watch", [[0.70, 0.70], [0.80, 0.70], [0.80, 0.80]]);
  await page.waitForFunction(() => [...document.querySelectorAll("#zones li span")].some((s) => s.textContent.startsWith("Temporary")), null, WAIT);
  await page.click('#zones li:has(span:text-is("Temporary (watch)")) button');
  await page.waitForFunction(() => ![...document.querySelectorAll("#zones li span")].some((s) => s.textContent.startsWith("Temporary")), null, WAIT);
});

await step("zoomed out, the map shows cells instead of vehicles", async () => {
  await page.evaluate(() => window.dispatchDashboard.map.setZoom(9));
  await page.waitForFunction(() => window.dispatchDashboard.renderedCells() > 0, null, WAIT);
});

await page.screenshot({ path: join(screenshots, "dashboard-cells.png") });

await step("a trip that ended while the page heard nothing leaves the map at the next poll", async () => {
  // One of the simulated city's trips under way, as the map holds it.
  const victim = await page.waitForFunction(
    (exclude) => {
      for (const [id, trip] of window.dispatchDashboard.state.trips) {
        if (id !== exclude && trip.state !== "requested") return id;
      }
      return null;
    },
    tripId,
    WAIT,
  );
  const held = await victim.jsonValue();
  const wsUrl = await page.evaluate(() => window.dispatchDashboard.state.config.ws_url);
  // The page's live connection is gone (the last step: nothing after needs it); meanwhile
  // another dispatcher cancels the trip (or it ends by itself), and the page never receives
  // that update.
  await page.evaluate(() => window.dispatchDashboard.state.client.close());
  const other = connectDispatcher({ url: wsUrl, token });
  try {
    await other.cancel(held, "cancelled while the dashboard was offline");
  } catch (error) {
    console.log(`the trip was not cancelled (${error.message}): it ended otherwise`);
  } finally {
    other.close();
  }
  // Two polls at the most.
  await page.waitForFunction((id) => !window.dispatchDashboard.state.trips.has(id), held, {
    timeout: 12_000,
  });
});

await browser.close();
if (pageErrors.length) {
  console.log(`FAIL the page raised errors: ${pageErrors.join("; ")}`);
  process.exit(1);
}
console.log(JSON.stringify({ vehicles_rendered: vehicles }));
