-- Retention. A blob whose deletion failed waits before its next attempt (exponential
-- backoff), so keys that keep failing never hold up the others. Adding a column with a
-- default changes the catalog only.
ALTER TABLE blob_deletions
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_error      text;
CREATE INDEX blob_deletions_due_idx ON blob_deletions (next_attempt_at);

-- Retention trims every table oldest first through these, so a batch reads only the rows it
-- deletes. Built in the migration's transaction, not CONCURRENTLY: a concurrent build waits
-- for every open snapshot, including a replica's migrator waiting for the migration lock,
-- which would deadlock replicas that start together.
CREATE INDEX outbox_events_trim_idx ON outbox_events (created_at) WHERE position IS NOT NULL;
-- Deliveries by event: whether an event still has one pending, and the cascade when it is
-- trimmed.
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id, status);
-- Callbacks of our jobs (unknown ones have their own index).
CREATE INDEX webhook_inbox_trim_idx ON webhook_inbox (received_at) WHERE outcome <> 'unknown_request';
-- Finished keys only: a key in flight is never trimmed.
CREATE INDEX idempotency_keys_done_idx ON idempotency_keys (created_at) WHERE state = 'done';
CREATE INDEX job_events_created_idx ON job_events (created_at);
CREATE INDEX webhook_endpoint_secrets_expired_idx ON webhook_endpoint_secrets (expires_at)
    WHERE expires_at IS NOT NULL;
