// Reconnection delays: jittered, growing, capped.
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay } from "../../dist/index.js";

const BACKOFF = { initialMs: 500, maxMs: 15_000 };

test("the delay's ceiling doubles with each attempt up to the maximum", () => {
  const highest = (attempt) => backoffDelay(attempt, BACKOFF, () => 1);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 10].map(highest),
    [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
});

test("delays are spread between half the first delay and the ceiling", () => {
  for (const attempt of [0, 3, 8]) {
    const lowest = backoffDelay(attempt, BACKOFF, () => 0);
    assert.equal(lowest, 250);
    const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(attempt, BACKOFF)));
    assert.ok(attempt === 0 || spread.size > 10, `attempt ${attempt}: ${[...spread]}`);
    for (const delay of spread) assert.ok(delay >= 250 && delay <= 15_000, String(delay));
  }
});
