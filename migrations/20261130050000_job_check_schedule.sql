-- Status lookups are a safety net for webhooks, and deadlines fit each job's own work.
ALTER TABLE jobs
    -- How long fal is expected to run the job (the estimate `GET /presets` shows for a
    -- training; derived from image count, steps and size for a generation item).
    ADD COLUMN estimated_seconds double precision,
    -- Safety-net status lookups made since submission (their spacing doubles with each).
    ADD COLUMN status_checks integer NOT NULL DEFAULT 0,
    -- Someone watches the job (a GET of it, or an event stream filtered to it or its avatar)
    -- until then: its live progress is fetched from fal at most once per check interval.
    ADD COLUMN watched_until timestamptz,
    -- When fal was last asked where the job stands (by any replica).
    ADD COLUMN progress_checked_at timestamptz;

CREATE INDEX jobs_watched_idx ON jobs (watched_until)
    WHERE watched_until IS NOT NULL AND status IN ('submitted', 'in_progress');
