-- What fal billed for a request, when it said so: the `X-Fal-Billable-Units` header of the
-- request's result, and those units priced at the time they were read. NULL: fal reported
-- nothing (the result came by webhook alone, or fal sent no header).
ALTER TABLE jobs
    ADD COLUMN fal_billable_units double precision CHECK (fal_billable_units >= 0),
    ADD COLUMN actual_cost_usd    double precision CHECK (actual_cost_usd >= 0);

-- Usage reports read a tenant's trainings and generations by creation time.
CREATE INDEX jobs_tenant_training_created_idx ON jobs (tenant_id, created_at) WHERE kind = 'training';
CREATE INDEX generations_tenant_created_idx ON generations (tenant_id, created_at);
