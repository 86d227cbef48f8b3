-- Tenants are the calling services; every other row belongs to one.
CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys are shown once at creation and stored only as a SHA-256 hash: they are 256-bit
-- random secrets, so a fast hash is enough and lookups stay a single index probe.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    label         text NOT NULL DEFAULT '',
    prefix        text NOT NULL,
    key_hash      bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

CREATE TABLE avatars (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 400),
    kind            text NOT NULL CHECK (kind IN ('character', 'style', 'product', 'general')),
    owner_ref       text,
    trigger_phrase  text NOT NULL,
    status          text NOT NULL DEFAULT 'draft'
                    CHECK (status IN ('draft', 'ready', 'training', 'trained', 'failed', 'cancelled')),
    photo_count     integer NOT NULL DEFAULT 0 CHECK (photo_count >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- A trigger phrase names one subject within a tenant, whatever its case.
CREATE UNIQUE INDEX avatars_tenant_trigger_phrase_key ON avatars (tenant_id, lower(trigger_phrase));
-- Ids are UUIDv7 (time-ordered): listing pages walk this index newest first.
CREATE INDEX avatars_tenant_page_idx ON avatars (tenant_id, id DESC);
CREATE INDEX avatars_tenant_owner_page_idx ON avatars (tenant_id, owner_ref, id DESC);
