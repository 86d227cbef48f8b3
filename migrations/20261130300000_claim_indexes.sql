-- Uploads whose worker died before the submit, oldest first: the upload claim's first probe.
-- (Pending jobs have jobs_pending_idx.) Small: only jobs still uploading are in it.
CREATE INDEX jobs_abandoned_upload_idx ON jobs (created_at)
    WHERE status = 'uploading' AND submit_started_at IS NULL;
