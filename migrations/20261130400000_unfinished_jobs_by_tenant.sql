-- A tenant's unfinished jobs, for the quota counts that every training and generation request
-- makes while it holds its tenant's row lock. Without it the count of running generations read
-- the whole jobs table (a sequential scan: 16 ms at 110,000 jobs, against 0.03 ms with it), so
-- every generation request, and the tenant's other requests queued behind its lock, grew slower
-- as the table grew. Small: only unfinished jobs are in it. Its condition is the quota
-- statements' own (`store::tenants`, whose test keeps the two the same).
CREATE INDEX jobs_tenant_unfinished_idx ON jobs (tenant_id, kind) INCLUDE (generation_id)
    WHERE status IN ('pending', 'uploading', 'submitted', 'in_progress', 'submit_unknown');
