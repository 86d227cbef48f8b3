-- Failed attempts at fetching a finished job's result or copying its artifacts into our
-- storage; bounded by CUSTODY_MAX_ATTEMPTS.
ALTER TABLE jobs ADD COLUMN custody_attempts integer NOT NULL DEFAULT 0;
