-- One outbox row per transition, carrying all of its messages in order: a transition writes
-- one row instead of one per message. Rows left by the previous layout are kept.
ALTER TABLE outbox ADD COLUMN subjects text[], ADD COLUMN payloads bytea[];
UPDATE outbox SET subjects = ARRAY[subject], payloads = ARRAY[payload];
ALTER TABLE outbox
    DROP COLUMN subject,
    DROP COLUMN payload,
    ALTER COLUMN subjects SET NOT NULL,
    ALTER COLUMN payloads SET NOT NULL,
    ADD CONSTRAINT outbox_one_payload_per_subject
        CHECK (cardinality(subjects) = cardinality(payloads));
