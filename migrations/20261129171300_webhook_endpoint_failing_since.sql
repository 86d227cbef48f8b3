-- Since when every attempt to an endpoint has failed (NULL while it is healthy): an endpoint
-- failing for long enough is disabled, so it stops taking relay slots.
ALTER TABLE webhook_endpoints ADD COLUMN failing_since timestamptz;
