-- Integrators' API keys. The secret is never stored: only its SHA-256, compared when a key is
-- presented as `dk_{key_id}_{secret}`. A revoked key stays listed with the time it was revoked.
CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    name        text NOT NULL,
    secret_hash bytea NOT NULL,
    scopes      text[] NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- A job is a trip created through the API: whose it is (`key:{key_id}` or
-- `dispatcher:{sub}`), and the integrator's own reference and notes. A retried create finds
-- the job by its creator and idempotency key.
--
-- A scheduled job has a pickup time. It is a request that waits: stored with
-- `dispatch_attempts = 0` and `last_dispatched_at` at the time it is due (pickup time less
-- the lead), which the sweeper publishes when that time comes; its search deadline is the end
-- of its pickup window.
ALTER TABLE trips
    ADD COLUMN created_by   text,
    ADD COLUMN external_ref text,
    ADD COLUMN notes        text,
    ADD COLUMN pickup_at    timestamptz;
CREATE UNIQUE INDEX trips_job_idempotency ON trips (created_by, idempotency_key)
    WHERE created_by IS NOT NULL;
CREATE INDEX trips_by_creator ON trips (created_by, requested_at DESC, trip_id DESC)
    WHERE created_by IS NOT NULL;
