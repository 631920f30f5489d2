// The checked-in types are what the protocol's schema generates today.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { generate } from "../../scripts/generate.mjs";

test("src/protocol.ts is generated from the current protocol schema", async () => {
  const checkedIn = readFileSync(new URL("../../src/protocol.ts", import.meta.url), "utf8");
  const fresh = await generate();
  assert.ok(
    checkedIn === fresh,
    "src/protocol.ts is stale: run `npm run generate` in clients/typescript and commit it",
  );
  // Every server message type has its variant.
  for (const type of ["welcome", "session_state", "ack", "error", "offer", "trip_update",
    "driver_position", "vehicles", "cell_aggregates", "queue_place"]) {
    assert.match(checkedIn, new RegExp(`type: "${type}";`), type);
  }
});
