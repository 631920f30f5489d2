// The driver's side of the SDK on a scripted socket (the real gateway's behaviour is covered by
// test/gateway): position reports spaced to the welcome's rate with only the latest kept,
// stale fixes never sent after a reconnection, trip reports made offline sent in order.

import assert from "node:assert/strict";
import { test } from "node:test";

import { connectDriver } from "../../dist/index.js";

/** Sockets the test plays the server for; `sockets` holds every one made, newest last. */
function scriptedServer({ messagesPerSec = 4 } = {}) {
  const sockets = [];
  class Socket {
    readyState = 0;
    sent = [];
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;
    constructor(url) {
      this.url = url;
      sockets.push(this);
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.({});
      }, 0);
    }
    send(text) {
      const frame = JSON.parse(text);
      this.sent.push(frame);
      if (frame.type === "hello") {
        this.reply({
          type: "welcome",
          version: 1,
          role: "driver",
          subject: "d1",
          limits: { max_message_bytes: 65536, messages_per_sec: messagesPerSec },
        });
        this.reply({ type: "session_state", driver: { online: true }, trips: [] });
      }
    }
    reply(message) {
      setTimeout(() => this.onmessage?.({ data: JSON.stringify(message) }), 0);
    }
    close(code = 1000, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code, reason }), 0);
    }
    /** The frames of one type this socket was sent. */
    of(type) {
      return this.sent.filter((f) => f.type === type);
    }
  }
  return { Socket, sockets };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(what, check, ms = 5_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

test("positions are spaced to half the welcome's rate, and only the latest is sent", async () => {
  const server = scriptedServer({ messagesPerSec: 4 }); // one report per 500 ms
  const driver = connectDriver({ url: "ws://test/ws", token: "t", WebSocket: server.Socket, watchNetwork: false });
  try {
    await driver.ready();
    assert.equal(driver.reportIntervalMs, 500);
    const socket = server.sockets[0];
    for (let i = 0; i < 20; i++) {
      driver.reportLocation({ lat: 52.5, lng: 13.4 + i / 1000 });
      await sleep(30);
    }
    // 600 ms of reports every 30 ms: the first at once, the next 500 ms later, with the
    // latest fix at that moment; the rest wait for the next slot.
    await until("the held report", () => socket.of("location").length === 3);
    const sent = socket.of("location");
    assert.equal(sent[0].lng, 13.4);
    assert.ok(sent[1].lng > 13.41, `second report ${sent[1].lng}`);
    assert.equal(sent[2].lng, 13.4 + 19 / 1000);
    assert.ok(sent[1].seq > sent[0].seq && sent[2].seq > sent[1].seq);
  } finally {
    driver.close();
  }
});

test("a fix gone stale while the connection was down is not sent when it is back", async () => {
  const server = scriptedServer({ messagesPerSec: 100 });
  const driver = connectDriver({
    url: "ws://test/ws",
    token: "t",
    WebSocket: server.Socket,
    watchNetwork: false,
    staleAfterMs: 50,
    holdFixMs: 50,
    backoff: { initialMs: 200, maxMs: 200 },
  });
  try {
    await driver.ready();
    server.sockets[0].close(1006, "lost");
    await until("the connection lost", () => driver.connection.state === "reconnecting");
    driver.reportLocation({ lat: 52.5, lng: 13.4 });
    await until("the second connection", () => server.sockets.length === 2 && driver.connection.state === "open");
    // The held fix is weighed the moment the session opens, and was found stale.
    assert.deepEqual(server.sockets[1].of("location"), []);
    // A fresh one goes out at once.
    driver.reportLocation({ lat: 52.6, lng: 13.5 });
    assert.equal(server.sockets[1].of("location").length, 1);
  } finally {
    driver.close();
  }
});

test("trip reports made offline go out in order, each after the one before is answered", async () => {
  const server = scriptedServer();
  const driver = connectDriver({
    url: "ws://test/ws",
    token: "t",
    WebSocket: server.Socket,
    watchNetwork: false,
    backoff: { initialMs: 100, maxMs: 100 },
  });
  try {
    await driver.ready();
    server.sockets[0].close(1006, "lost");
    await until("the connection lost", () => driver.connection.state === "reconnecting");
    const trip = "5b0c3d52-4b4f-4c40-9a5a-9f1f2b7e0c11";
    const madeAt = Date.now();
    const arrived = driver.arrived(trip);
    const started = driver.started(trip);
    await until("the second connection", () => server.sockets.length === 2 && driver.connection.state === "open");
    const socket = server.sockets[1];
    await until("arrived sent", () => socket.of("trip_progress").length === 1);
    const [first] = socket.of("trip_progress");
    assert.equal(first.stage, "arrived");
    assert.ok(first.ts >= madeAt && first.ts < madeAt + 100, "stamped when the stage was reached");
    // `started` is not even handed to the connection until `arrived` is answered.
    assert.equal(driver.connection.unanswered, 1, "started waits for arrived's answer");
    assert.equal(socket.of("trip_progress").length, 1);
    const view = (state, version) => ({
      trip_id: trip, state, rider_id: "r", pickup: { lat: 0, lng: 0 }, dropoff: { lat: 1, lng: 1 },
      region: "85", created_at: 0, updated_at: 0, version,
    });
    socket.reply({ type: "ack", id: first.id, trip: view("arrived", 3), changed: true });
    assert.equal((await arrived).state, "arrived");
    await until("started sent", () => socket.of("trip_progress").length === 2);
    const second = socket.of("trip_progress")[1];
    assert.equal(second.stage, "started");
    socket.reply({ type: "ack", id: second.id, trip: view("in_progress", 4), changed: true });
    assert.equal((await started).state, "in_progress");
    assert.equal(driver.connection.trips.get(trip).version, 4);
  } finally {
    driver.close();
  }
});

test("no common protocol version ends the session rather than retrying", async () => {
  const server = scriptedServer();
  class NoVersion extends server.Socket {
    send(text) {
      const frame = JSON.parse(text);
      this.sent.push(frame);
      if (frame.type === "hello") {
        assert.deepEqual(frame.versions, [1]);
        this.reply({ type: "error", id: null, code: "unsupported_version", message: "speaks 2" });
        this.close(4002, "no common version");
      }
    }
  }
  const problems = [];
  const driver = connectDriver({ url: "ws://test/ws", token: "t", WebSocket: NoVersion, watchNetwork: false });
  driver.on("problem", (e) => problems.push(e.code));
  await assert.rejects(driver.ready(), (e) => e.code === "unavailable");
  assert.equal(driver.connection.state, "closed");
  assert.deepEqual(problems, ["unsupported_version"]);
  // Closed for good: no attempt is scheduled, so there is nothing to wait for.
  assert.equal(server.sockets.length, 1, "no second attempt");
});
