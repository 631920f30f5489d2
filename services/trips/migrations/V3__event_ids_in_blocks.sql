-- Each trips process takes event ids from the sequence in blocks (one nextval hands out
-- `increment` ids), so a transition needs no round trip for its id. Ids from different
-- processes then interleave, so the order of one trip's events is its version: the trip's
-- version after the event, unique per trip.
ALTER SEQUENCE trip_events_event_id_seq INCREMENT BY 64;
ALTER TABLE trip_events ADD COLUMN version bigint;
UPDATE trip_events e SET version = n.version
FROM (SELECT event_id, row_number() OVER (PARTITION BY trip_id ORDER BY event_id) AS version
      FROM trip_events) n
WHERE e.event_id = n.event_id;
ALTER TABLE trip_events ALTER COLUMN version SET NOT NULL;
DROP INDEX trip_events_by_trip;
CREATE UNIQUE INDEX trip_events_by_trip ON trip_events (trip_id, version);
