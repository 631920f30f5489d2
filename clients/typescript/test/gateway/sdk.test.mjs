// The SDK against the real gateway, trips service, matcher and NATS: a whole ride, a gateway
// restarted under a connected driver, commands that time out, retried and re-sent commands
// that must not happen twice, and a refreshed token.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { DispatchError, connectDriver, connectRider } from "../../dist/index.js";
import { GATEWAY_WS, PROXY_WS, control, near, next, token, until } from "./env.mjs";

const FAST = { initialMs: 100, maxMs: 1_000 };

test("a rider and a driver complete a ride, each seeing the other's updates", async () => {
  const driver = connectDriver({ url: GATEWAY_WS, token: token("driver", "sdk-driver-ride") });
  const rider = connectRider({ url: GATEWAY_WS, token: token("rider", "sdk-rider-ride") });
  try {
    const welcome = await driver.ready();
    assert.equal(welcome.version, 1);
    assert.equal(welcome.subject, "sdk-driver-ride");
    assert.ok(welcome.limits.messages_per_sec > 0);
    await driver.goOnline("standard", 4);
    await driver.locate(near(0));
    await rider.ready();

    const offered = next(driver, "offer");
    const trip = await rider.requestRide({ pickup: near(30), dropoff: near(1_500, 500) });
    assert.equal(trip.state, "requested");
    const offer = await offered;
    assert.equal(offer.trip.trip_id, trip.trip_id);
    assert.ok(offer.expires_at > Date.now());

    const accepted = next(rider, "trip", (t) => t.trip_id === trip.trip_id && t.state === "accepted");
    assert.equal((await driver.accept(trip.trip_id)).state, "accepted");
    assert.equal((await accepted).driver_id, "sdk-driver-ride");

    // The rider follows the driver's position, with the time to the pickup.
    const position = next(rider, "driver_position", (p) => p.trip_id === trip.trip_id);
    await driver.locate(near(20));
    const seen = await position;
    assert.equal(seen.driver_id, "sdk-driver-ride");
    assert.equal(seen.eta?.to, "pickup");

    for (const [report, state] of [
      [() => driver.arrived(trip.trip_id), "arrived"],
      [() => driver.started(trip.trip_id), "in_progress"],
    ]) {
      const told = next(rider, "trip", (t) => t.trip_id === trip.trip_id && t.state === state);
      assert.equal((await report()).state, state);
      await told;
    }
    await driver.locate(near(1_500, 500));
    const ended = next(rider, "trip", (t) => t.trip_id === trip.trip_id && t.state === "completed");
    assert.equal((await driver.completed(trip.trip_id)).state, "completed");
    await ended;
    assert.deepEqual(rider.activeTrips(), []);
    await driver.goOffline();
  } finally {
    driver.close();
    rider.close();
  }
});

test("a gateway restarted under a driver: it reconnects with backoff and nothing is lost", async () => {
  const reasons = [];
  const driver = connectDriver({
    url: GATEWAY_WS,
    token: (reason) => {
      reasons.push(reason);
      return token("driver", "sdk-driver-restart");
    },
    backoff: FAST,
  });
  try {
    await driver.ready();
    await driver.goOnline("van", 2);
    const attempts = [];
    driver.on("state", (state) => {
      if (state === "connecting") attempts.push(Date.now());
    });

    const lost = next(driver, "state", (s) => s === "reconnecting");
    const resumedState = next(driver, "session_state", () => true, 30_000);
    await control("gateway/restart");
    await lost;
    // Issued while the gateway is away: waits, and is carried out once it is back.
    const going = driver.goOffline();
    assert.equal(driver.connection.unanswered, 1);
    await next(driver, "state", (s) => s === "open", 30_000);
    const ack = await going;
    assert.equal(ack.type, "ack");
    assert.equal(driver.connection.unanswered, 0);
    // The new session started from the driver's status as the server kept it.
    const resumed = await resumedState;
    assert.equal(resumed.driver?.online, true);
    assert.equal(resumed.driver?.vehicle_class, "van");

    // Attempts while the gateway was down: more than one, spaced out rather than in a loop.
    assert.ok(attempts.length >= 2, `attempts: ${attempts.length}`);
    const gaps = attempts.slice(1).map((t, i) => t - attempts[i]);
    assert.ok(gaps.every((gap) => gap >= FAST.initialMs / 2 - 5), `gaps: ${gaps}`);
    assert.ok(attempts.length < 60, `a tight loop: ${attempts.length} attempts`);
    // The token was asked for again for the new connection.
    assert.equal(reasons[0], "connect");
    assert.ok(reasons.slice(1).every((r) => r === "reconnect") && reasons.length >= 2, `${reasons}`);
  } finally {
    driver.close();
  }
});

test("a command with no answer in time fails with `timeout`", async () => {
  const rider = connectRider({
    url: PROXY_WS,
    token: token("rider", "sdk-rider-timeout"),
    commandTimeoutMs: 300,
  });
  try {
    await rider.ready();
    await control("proxy/stall");
    const started = Date.now();
    const error = await rider.getTrip(randomUUID()).catch((e) => e);
    assert.ok(error instanceof DispatchError, String(error));
    assert.equal(error.code, "timeout");
    assert.ok(Date.now() - started >= 290);
    assert.equal(rider.connection.unanswered, 0);
  } finally {
    await control("proxy/restore");
    rider.close();
  }
});

test("a request retried with the same idempotency key after a timeout yields one trip", async () => {
  const rider = connectRider({
    url: PROXY_WS,
    token: token("rider", "sdk-rider-retry"),
    commandTimeoutMs: 500,
  });
  try {
    await rider.ready();
    const request = { pickup: near(-2_000), dropoff: near(-2_500, 800), idempotencyKey: "sdk-retry-1" };
    await control("proxy/stall");
    const first = await rider.requestRide(request).catch((e) => e);
    assert.equal(first.code, "timeout");
    // The held request reaches the server now; the app retries with the same key.
    await control("proxy/restore");
    const trip = await until("a retried request answered", () =>
      rider.requestRide(request).catch((e) => (e.code === "timeout" ? null : Promise.reject(e))),
    );
    assert.equal(trip.rider_id, "sdk-rider-retry");
    // Both answers (the late one and the retry's) name the same single trip.
    await until("the late answer", () => rider.connection.trips.has(trip.trip_id));
    assert.deepEqual([...rider.connection.trips.keys()], [trip.trip_id]);
    await rider.cancel(trip.trip_id, "test over");
  } finally {
    rider.close();
  }
});

test("a request in flight when the connection is cut is sent again, with its key, once back", async () => {
  const rider = connectRider({
    url: PROXY_WS,
    token: token("rider", "sdk-rider-resend"),
    backoff: FAST,
  });
  try {
    await rider.ready();
    await control("proxy/stall");
    const request = rider.requestRide({ pickup: near(-2_100), dropoff: near(-2_600, 900) });
    await until("the request written", () => rider.connection.unanswered === 1);
    const lost = next(rider, "state", (s) => s === "reconnecting");
    await control("proxy/cut");
    await lost;
    await control("proxy/restore");
    const trip = await request;
    assert.equal(trip.rider_id, "sdk-rider-resend");
    assert.equal(rider.connection.state, "open");
    assert.deepEqual(rider.activeTrips().map((t) => t.trip_id), [trip.trip_id]);
    await rider.cancel(trip.trip_id, "test over");
  } finally {
    rider.close();
  }
});

test("a refused token is refreshed through the token provider", async () => {
  const reasons = [];
  const problems = [];
  const rider = connectRider({
    url: GATEWAY_WS,
    // The first token expired two minutes ago, past the gateway's leeway.
    token: (reason) => {
      reasons.push(reason);
      return token("rider", "sdk-rider-refresh", reasons.length === 1 ? -120 : 3600);
    },
    backoff: FAST,
  });
  rider.on("problem", (error) => problems.push(error.code));
  try {
    const welcome = await rider.ready();
    assert.equal(welcome.subject, "sdk-rider-refresh");
    assert.deepEqual(reasons, ["connect", "rejected"]);
    assert.deepEqual(problems, ["unauthorized"]);
  } finally {
    rider.close();
  }
});

test("a token of another role is refused by the client", async () => {
  const driver = connectDriver({ url: GATEWAY_WS, token: token("rider", "sdk-not-a-driver") });
  const problem = await next(driver, "problem");
  assert.equal(problem.code, "forbidden");
  await until("the connection closed", () => driver.connection.state === "closed");
  await assert.rejects(driver.goOnline("standard"), (e) => e.code === "unavailable");
});
