-- Which zones each driver is in, as recorded from the gateways' zone events. An enter for a
-- zone the driver is already in, or an exit from one it is not in, repeats what is known and
-- is dropped: each crossing is one event however many gateways (or retries) report it.
CREATE TABLE zone_presence (
    driver_id  text NOT NULL,
    zone_id    uuid NOT NULL,
    entered_at timestamptz NOT NULL,
    dwelt      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (driver_id, zone_id)
);
CREATE INDEX zone_presence_by_zone ON zone_presence (zone_id);

-- Where dispatchers want events delivered. `event_types` empty: every type.
CREATE TABLE webhook_endpoints (
    endpoint_id uuid PRIMARY KEY,
    url         text NOT NULL,
    secret      text NOT NULL,
    event_types text[] NOT NULL DEFAULT '{}',
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per event and endpoint, queued by the outbox in the transaction that publishes the
-- event, deleted once the endpoint answered 2xx. Rows of one ordering key (a driver, a trip)
-- are delivered one at a time in delivery_id order; a row that keeps failing past the
-- retention is marked dead (the dead-letter list) and the rows after it go on.
CREATE TABLE webhook_deliveries (
    delivery_id     bigserial PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    ordering_key    text NOT NULL,
    body            text NOT NULL,
    event_at        timestamptz NOT NULL,
    queued_at       timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    dead            boolean NOT NULL DEFAULT false
);
CREATE INDEX webhook_deliveries_pending
    ON webhook_deliveries (endpoint_id, ordering_key, delivery_id) WHERE NOT dead;
CREATE INDEX webhook_deliveries_dead
    ON webhook_deliveries (endpoint_id, delivery_id) WHERE dead;
