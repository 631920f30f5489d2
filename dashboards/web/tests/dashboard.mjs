// Drives the dashboard in Debian's headless Chromium through playwright-core. Started by the
// system test `dashboard::the_dispatcher_dashboard_*`, which runs the stack and the simulator and
// then checks PostgreSQL; this script checks what the page shows and does.
//
// Environment: DASHBOARD_URL (the page), DISPATCHER_TOKEN, TRIP_ID (a trip to cancel, whose
// driver's name is DRIVER_NAME), FLAGGED_TRIP_ID (a trip of rider `rider-far`, completed far
// from its dropoff),
// SCREENSHOT_DIR, CHROMIUM_BIN.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("DASHBOARD_URL");
const token = env("DISPATCHER_TOKEN");
const tripId = env("TRIP_ID");
const driverName = env("DRIVER_NAME");
const flaggedTripId = env("FLAGGED_TRIP_ID");
const screenshots = env("SCREENSHOT_DIR");
const WAIT = { timeout: 45_000 };

mkdirSync(screenshots, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    // WebGL on the CPU, for the map.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
  ],
});
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

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

await step("the page asks for a token", async () => {
  await page.goto(url);
  await page.waitForSelector("#login:not([hidden])", WAIT);
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

await step("zoomed out, the map shows cells instead of vehicles", async () => {
  await page.evaluate(() => window.dispatchDashboard.map.setZoom(9));
  await page.waitForFunction(() => window.dispatchDashboard.renderedCells() > 0, null, WAIT);
});

await page.screenshot({ path: join(screenshots, "dashboard-cells.png") });
await browser.close();
if (pageErrors.length) {
  console.log(`FAIL the page raised errors: ${pageErrors.join("; ")}`);
  process.exit(1);
}
console.log(JSON.stringify({ vehicles_rendered: vehicles }));
