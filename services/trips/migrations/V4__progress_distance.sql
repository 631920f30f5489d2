-- A driver's progress report is checked against the driver's latest position: the event
-- records how far from the stage's place (the pickup, or the dropoff for a completion) it was
-- reported, and flags a completion far from the dropoff for dispatchers.
ALTER TABLE trip_events ADD COLUMN distance_m double precision;
ALTER TABLE trip_events ADD COLUMN flagged boolean NOT NULL DEFAULT false;
