-- Each outbox message says what it is, beside the subject and payload it is published with:
-- its kind ('bus' for matchers, dashboards and gateways; 'client' for one client's inbox;
-- 'event' for integrators) and, for a client's message, the client's role and id. The
-- publishing round addresses a client's message to its gateway from the role and id, and
-- parses nothing. An event's webhook deliveries are queued by the statement that writes its
-- row (so every new row has hooks_queued = true).
--
-- Expand only: every new column is nullable and the old ones stay, so a replica of the
-- previous release (which writes subjects and payloads alone, and reads only those and
-- hooks_queued) keeps publishing during a rolling upgrade, and rows it writes (kinds IS NULL)
-- are published by this release as that release would. A later release drops hooks_queued
-- and makes kinds NOT NULL, once no replica of 0.1 runs.
ALTER TABLE outbox
    ADD COLUMN kinds text[],
    ADD COLUMN roles text[],
    ADD COLUMN recipients text[],
    ADD CONSTRAINT outbox_kinds_known
        CHECK (kinds <@ ARRAY['bus', 'client', 'event']::text[]),
    ADD CONSTRAINT outbox_one_kind_per_message
        CHECK (kinds IS NULL OR (cardinality(kinds) = cardinality(subjects)
            AND cardinality(roles) = cardinality(subjects)
            AND cardinality(recipients) = cardinality(subjects)));
