// What the browser tests share: Debian's headless Chromium as playwright-core drives it, and
// their required settings.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

import { chromium } from "playwright-core";

/** The environment variable `name`; throws when it is not set. */
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

/** Chromium from CHROMIUM_BIN (or Debian's), headless, drawing WebGL maps on the CPU. */
export function launch() {
  return chromium.launch({
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
}

export function expect(condition, message) {
  if (!condition) throw new Error(message);
}

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/**
 * The WCAG 2 A and AA violations axe-core finds on `page` as it is now, one line each
 * (rule, impact, the first offending element). axe is evaluated through the DevTools
 * protocol, which the pages' Content-Security-Policy does not govern, so nothing is loosened
 * for it.
 */
export async function accessibilityViolations(page) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    globalThis.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "best-practice"] } }),
  );
  return result.violations.map(
    (v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes[0]?.target.join(" ") ?? "?"}`,
  );
}

/** Throws, listing them, when axe-core finds violations on `page` as it is now. */
export async function expectAccessible(page, what) {
  const violations = await accessibilityViolations(page);
  expect(violations.length === 0, `${what} fails the accessibility audit:\n  ${violations.join("\n  ")}`);
}
