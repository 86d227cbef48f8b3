-- Failed attempts at fetching a finished job's result or copying its artifacts into our
-- storage; bounded by CUSTODY_MAX_ATTEMPTS.
ALTER TABLE jobs ADD COLUMN custody_attempts integer NOT NULL DEFAULT 0;

-- `finishing`: fal succeeded and the service is still taking the result and artifacts into its
-- custody. A job ends `succeeded` only once they are held, so a success never leaves its avatar
-- training or its generation in progress.
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
UPDATE jobs SET status = 'finishing'
    WHERE status = 'succeeded' AND (custody_needed OR result_fetch_needed);
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check CHECK (status IN ('pending', 'uploading',
    'submitted', 'in_progress', 'submit_unknown', 'finishing', 'succeeded', 'failed', 'cancelled',
    'timed_out'));

-- A training still finishing is its avatar's live training.
DROP INDEX jobs_one_active_training_per_avatar;
CREATE UNIQUE INDEX jobs_one_active_training_per_avatar ON jobs (avatar_id)
    WHERE kind = 'training'
      AND status IN ('pending', 'uploading', 'submitted', 'in_progress', 'submit_unknown', 'finishing');
DROP INDEX jobs_check_idx;
CREATE INDEX jobs_check_idx ON jobs (next_check_at)
    WHERE status IN ('uploading', 'submitted', 'in_progress', 'submit_unknown', 'finishing');
