-- The order drivers joined a zone, as recorded: a queue zone's drivers wait in this order.
ALTER TABLE zone_presence ADD COLUMN queued_seq bigserial;
CREATE INDEX zone_presence_queue ON zone_presence (zone_id, queued_seq);
