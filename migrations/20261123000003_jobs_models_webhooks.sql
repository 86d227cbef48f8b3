-- One table for every piece of work sent to fal (trainings now, generations later). The status
-- column only ever changes through conditional updates derived from the domain's transition
-- function; every change, and every event that changed nothing, is recorded in job_events.
CREATE TABLE jobs (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Kept when the avatar is deleted: the job is a billing record, and fal may still call back.
    avatar_id           uuid REFERENCES avatars (id) ON DELETE SET NULL,
    kind                text NOT NULL CHECK (kind IN ('training', 'generation')),
    status              text NOT NULL CHECK (status IN ('pending', 'uploading', 'submitted', 'in_progress',
                            'submit_unknown', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    trainer             text,
    endpoint            text NOT NULL,
    preset              text,
    params              jsonb NOT NULL DEFAULT '{}',
    trigger_phrase      text,
    -- A caller's own archive, fetched and checked at request time and kept here for the worker.
    input_blob_key      text,
    estimated_cost_usd  double precision,
    -- Shared with fal through the webhook URL; correlates a callback with its job.
    webhook_token       text NOT NULL,
    fal_request_id      text UNIQUE,
    status_url          text,
    response_url        text,
    cancel_url          text,
    queue_position      integer,
    progress            double precision CHECK (progress BETWEEN 0 AND 1),
    error_code          text,
    error_message       text,
    result              jsonb,
    -- The result arrived without a payload: fetch it from fal.
    result_fetch_needed boolean NOT NULL DEFAULT false,
    -- Artifacts (LoRA file) still to be copied into our storage.
    custody_needed      boolean NOT NULL DEFAULT false,
    -- Lease and fencing token: a worker owns the job until lease_until, and every write it makes
    -- carries the fence it was given, so a worker whose lease was taken over writes nothing.
    lease_owner         uuid,
    lease_until         timestamptz,
    fence               bigint NOT NULL DEFAULT 0,
    submit_started_at   timestamptz,
    next_check_at       timestamptz,
    check_failures      integer NOT NULL DEFAULT 0,
    deadline_at         timestamptz,
    cancel_requested_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    submitted_at        timestamptz,
    started_at          timestamptz,
    finished_at         timestamptz
);
-- At most one live training per avatar: the database refuses a second one, whatever races.
CREATE UNIQUE INDEX jobs_one_active_training_per_avatar ON jobs (avatar_id)
    WHERE kind = 'training' AND status IN ('pending', 'uploading', 'submitted', 'in_progress', 'submit_unknown');
CREATE INDEX jobs_tenant_avatar_idx ON jobs (tenant_id, avatar_id, id DESC);
CREATE INDEX jobs_pending_idx ON jobs (created_at) WHERE status = 'pending';
CREATE INDEX jobs_check_idx ON jobs (next_check_at)
    WHERE status IN ('uploading', 'submitted', 'in_progress', 'submit_unknown');
CREATE INDEX jobs_custody_idx ON jobs (updated_at) WHERE custody_needed OR result_fetch_needed;

CREATE TABLE job_events (
    id          bigserial PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event       text NOT NULL,
    from_status text,
    to_status   text,
    applied     boolean NOT NULL,
    cause       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job_idx ON job_events (job_id, id);

-- Every fal webhook delivery that passed signature verification. A redelivery of the same body
-- for the same request hits the unique key and changes nothing.
CREATE TABLE webhook_inbox (
    id              bigserial PRIMARY KEY,
    fal_request_id  text NOT NULL,
    body_sha256     text NOT NULL,
    job_id          uuid REFERENCES jobs (id) ON DELETE SET NULL,
    fal_status      text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('applied', 'ignored', 'unknown_request')),
    body            jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (fal_request_id, body_sha256)
);
CREATE INDEX webhook_inbox_unknown_idx ON webhook_inbox (received_at) WHERE outcome = 'unknown_request';

-- Trained models. An avatar points at its current one; retraining adds a new row and moves the
-- pointer only when the new training succeeded, so the old model stays usable meanwhile.
CREATE TABLE models (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    avatar_id         uuid REFERENCES avatars (id) ON DELETE CASCADE,
    training_id       uuid NOT NULL UNIQUE REFERENCES jobs (id),
    model_type        text NOT NULL CHECK (model_type IN ('lora', 'finetune')),
    trigger_phrase    text NOT NULL,
    artifact_key      text,
    artifact_sha256   text,
    artifact_bytes    bigint,
    config_key        text,
    fal_artifact_url  text,
    finetune_id       text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((model_type = 'lora' AND artifact_key IS NOT NULL) OR (model_type = 'finetune' AND finetune_id IS NOT NULL))
);
ALTER TABLE avatars ADD COLUMN current_model_id uuid REFERENCES models (id) ON DELETE SET NULL;

-- Events for callers, written in the same transaction as the change that causes them.
CREATE TABLE outbox_events (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    event_type  text NOT NULL,
    job_id      uuid,
    avatar_id   uuid,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_events_tenant_idx ON outbox_events (tenant_id, id);

-- Idempotency-Key records for POSTs that cost money.
CREATE TABLE idempotency_keys (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key              text NOT NULL,
    request_hash     text NOT NULL,
    state            text NOT NULL CHECK (state IN ('in_flight', 'done')),
    response_status  integer,
    response_body    jsonb,
    response_headers jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
