-- Trips, their event log, offers, the outbox and route breadcrumbs.
-- The trips service is the only writer of every table here.

CREATE TABLE drivers (
    driver_id     text PRIMARY KEY,
    name          text,
    online        boolean NOT NULL DEFAULT false,
    vehicle_class text,
    capacity      smallint CHECK (capacity BETWEEN 1 AND 64),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE riders (
    rider_id   text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE trips (
    trip_id            uuid PRIMARY KEY,
    rider_id           text NOT NULL REFERENCES riders,
    idempotency_key    text NOT NULL,
    state              text NOT NULL CHECK (state IN ('requested', 'offered', 'accepted', 'arrived',
                                                      'in_progress', 'completed', 'cancelled', 'expired')),
    driver_id          text REFERENCES drivers,
    region             text NOT NULL,
    pickup_lat         double precision NOT NULL,
    pickup_lng         double precision NOT NULL,
    dropoff_lat        double precision NOT NULL,
    dropoff_lng        double precision NOT NULL,
    vehicle_class      text,
    min_capacity       smallint,
    excluded_drivers   text[] NOT NULL DEFAULT '{}',
    search_deadline    timestamptz NOT NULL,
    offer_expires_at   timestamptz,
    requested_at       timestamptz NOT NULL DEFAULT now(),
    offered_at         timestamptz,
    accepted_at        timestamptz,
    arrived_at         timestamptz,
    started_at         timestamptz,
    completed_at       timestamptz,
    cancelled_at       timestamptz,
    expired_at         timestamptz,
    ended_by           text CHECK (ended_by IN ('rider', 'driver', 'dispatcher', 'system')),
    end_reason         text,
    version            bigint NOT NULL DEFAULT 1,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- When the request was last published to matchers; the sweeper re-publishes quiet ones.
    last_dispatched_at timestamptz NOT NULL DEFAULT now(),
    dispatch_attempts  integer NOT NULL DEFAULT 1,
    UNIQUE (rider_id, idempotency_key),
    -- A trip holding a driver names it.
    CHECK (driver_id IS NOT NULL OR state NOT IN ('offered', 'accepted', 'arrived', 'in_progress')),
    CHECK ((state = 'offered') = (offer_expires_at IS NOT NULL))
);

-- The invariant that settles races between matchers: a driver holds at most one trip that is
-- offered to it or under way.
CREATE UNIQUE INDEX trips_one_active_trip_per_driver ON trips (driver_id)
    WHERE state IN ('offered', 'accepted', 'arrived', 'in_progress');
CREATE INDEX trips_by_rider ON trips (rider_id, requested_at DESC);
CREATE INDEX trips_by_driver ON trips (driver_id, requested_at DESC) WHERE driver_id IS NOT NULL;
CREATE INDEX trips_by_time ON trips (requested_at DESC);
CREATE INDEX trips_open ON trips (state, last_dispatched_at) WHERE state IN ('requested', 'offered');

CREATE TABLE trip_events (
    event_id   bigserial PRIMARY KEY,
    trip_id    uuid NOT NULL REFERENCES trips,
    from_state text,
    to_state   text NOT NULL,
    actor      text NOT NULL CHECK (actor IN ('rider', 'driver', 'dispatcher', 'system')),
    actor_id   text,
    driver_id  text,
    reason     text,
    lat        double precision,
    lng        double precision,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX trip_events_by_trip ON trip_events (trip_id, event_id);

CREATE TABLE offers (
    offer_id     bigserial PRIMARY KEY,
    trip_id      uuid NOT NULL REFERENCES trips,
    driver_id    text NOT NULL REFERENCES drivers,
    offered_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    pickup_eta_s integer,
    outcome      text CHECK (outcome IN ('accepted', 'declined', 'expired', 'cancelled', 'superseded')),
    answered_at  timestamptz,
    -- A driver is never offered the same trip twice.
    UNIQUE (trip_id, driver_id)
);

-- Messages committed with a transition and published after commit, so that a crash between
-- the two loses nothing.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    subject    text NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE breadcrumbs (
    trip_id     uuid NOT NULL,
    driver_id   text NOT NULL,
    seq         bigint NOT NULL,
    lat         double precision NOT NULL,
    lng         double precision NOT NULL,
    heading     real,
    speed       real,
    recorded_at timestamptz NOT NULL
);
CREATE INDEX breadcrumbs_by_trip ON breadcrumbs (trip_id, recorded_at);
CREATE INDEX breadcrumbs_by_time ON breadcrumbs (recorded_at);
