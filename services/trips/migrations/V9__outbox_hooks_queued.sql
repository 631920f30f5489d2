-- An outbox row whose events were queued for their webhooks when it was written (zone events,
-- queued by the transaction that records them): the outbox only publishes it.
ALTER TABLE outbox ADD COLUMN hooks_queued boolean NOT NULL DEFAULT false;
