// What the browser tests share: Debian's headless Chromium as playwright-core drives it, and
// their required settings.

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
