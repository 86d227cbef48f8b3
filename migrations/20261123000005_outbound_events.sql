-- Events for callers: ordering, rendering, webhook endpoints and the delivery log.

-- An event's place in the one order every reader sees (commit order). Assigned after the
-- event's transaction committed, by the sequencer, one batch at a time under an advisory lock,
-- so a reader that saw position N never later finds an event below N.
CREATE SEQUENCE outbox_position_seq;
ALTER TABLE outbox_events
    ADD COLUMN position bigint UNIQUE,
    -- The body callers receive ({type, timestamp, data}), rendered once from `data` (a
    -- snapshot of the rows as the event's transaction left them) when the event is sequenced.
    ADD COLUMN payload  jsonb;
CREATE INDEX outbox_events_unsequenced_idx ON outbox_events (id) WHERE position IS NULL;
CREATE INDEX outbox_events_tenant_position_idx ON outbox_events (tenant_id, position)
    WHERE position IS NOT NULL;

-- A finished generation announces itself once.
ALTER TABLE generations ADD COLUMN settled_at timestamptz;

CREATE TABLE webhook_endpoints (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url               text NOT NULL,
    description       text,
    -- NULL: every event type.
    event_types       text[],
    enabled           boolean NOT NULL DEFAULT true,
    disabled_reason   text,
    -- The relay that currently delivers to this endpoint, and until when; `relay_fence` grows
    -- with every claim, so a relay whose lease was taken over cannot start another attempt.
    relay_owner       uuid,
    relay_lease_until timestamptz,
    relay_fence       bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id, id DESC);

-- Signing secrets. Several are live during a rotation's overlap: every one signs.
CREATE TABLE webhook_endpoint_secrets (
    id          uuid PRIMARY KEY,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX webhook_endpoint_secrets_endpoint_idx ON webhook_endpoint_secrets (endpoint_id);

-- One event to one endpoint.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL REFERENCES outbox_events (id) ON DELETE CASCADE,
    event_position   bigint NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    -- Attempts started; also the fence of the attempt in flight: only the relay that started
    -- attempt N may record its outcome on the delivery.
    attempt_count    integer NOT NULL DEFAULT 0,
    -- Attempts made before the last replay: a replayed delivery gets the whole retry schedule
    -- again.
    retry_base       integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_status_code integer,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (endpoint_id, event_position)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_next_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log_idx ON webhook_deliveries (endpoint_id, id DESC);

CREATE TABLE webhook_attempts (
    delivery_id      uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    number           integer NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    outcome          text NOT NULL DEFAULT 'in_flight'
                     CHECK (outcome IN ('in_flight', 'succeeded', 'failed', 'abandoned')),
    status_code      integer,
    latency_ms       integer,
    error            text,
    response_snippet text,
    PRIMARY KEY (delivery_id, number)
);
