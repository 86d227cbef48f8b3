-- A photo row is written before its bytes are stored ('pending') and marked 'stored' after, so
-- a crash mid-upload leaves a row the sweeper can find, never an unknown blob.
CREATE TABLE photos (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    avatar_id        uuid NOT NULL REFERENCES avatars (id) ON DELETE CASCADE,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'stored')),
    file_name        text NOT NULL,
    format           text NOT NULL CHECK (format IN ('jpeg', 'png', 'webp')),
    width            integer NOT NULL CHECK (width > 0),
    height           integer NOT NULL CHECK (height > 0),
    orientation      smallint NOT NULL DEFAULT 1 CHECK (orientation BETWEEN 1 AND 8),
    bytes            bigint NOT NULL CHECK (bytes > 0),
    sha256           text NOT NULL,
    perceptual_hash  bigint NOT NULL,
    warnings         jsonb NOT NULL DEFAULT '[]',
    blob_key         text NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now()
);
-- An exact duplicate within one avatar is refused by the database, whatever races.
CREATE UNIQUE INDEX photos_avatar_sha256_key ON photos (avatar_id, sha256);
CREATE INDEX photos_avatar_idx ON photos (avatar_id, id);
CREATE INDEX photos_pending_idx ON photos (created_at) WHERE state = 'pending';

-- Blobs whose rows are gone, written in the same transaction as the deletion; a worker deletes
-- the blobs and then these rows, so a crash never leaves an orphan.
CREATE TABLE blob_deletions (
    blob_key     text PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0
);
