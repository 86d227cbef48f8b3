-- Generations: one row per request to generate images with an avatar's model; each prompt is a
-- job of kind 'generation' in the one jobs table, so the same submitter, webhook handler,
-- reconciler and transition function run it.
CREATE TABLE generations (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Kept when the avatar or its model is deleted: the generation is a billing record.
    avatar_id          uuid REFERENCES avatars (id) ON DELETE SET NULL,
    model_id           uuid REFERENCES models (id) ON DELETE SET NULL,
    model_type         text NOT NULL CHECK (model_type IN ('lora', 'finetune')),
    endpoint           text NOT NULL,
    preset             text NOT NULL,
    num_images         integer NOT NULL CHECK (num_images BETWEEN 1 AND 4),
    -- What the caller asked for, normalised (prompts as given, size, seed, overrides).
    request            jsonb NOT NULL,
    estimated_cost_usd double precision,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX generations_tenant_avatar_idx ON generations (tenant_id, avatar_id, id DESC);

-- A generation's items. A LoRA item that failed only because fal could no longer fetch the
-- LoRA is retried once as a new job (attempt 2): the failed job stays failed, as terminal
-- states never change.
ALTER TABLE jobs
    ADD COLUMN generation_id uuid REFERENCES generations (id) ON DELETE CASCADE,
    ADD COLUMN item_index    integer,
    ADD COLUMN attempt       integer NOT NULL DEFAULT 1;
CREATE UNIQUE INDEX jobs_generation_item_attempt ON jobs (generation_id, item_index, attempt)
    WHERE generation_id IS NOT NULL;

-- Images kept in our blob store, one row per image fal produced.
CREATE TABLE generation_images (
    generation_id uuid NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    job_id        uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    item_index    integer NOT NULL,
    image_index   integer NOT NULL,
    blob_key      text NOT NULL,
    content_type  text NOT NULL,
    width         integer,
    height        integer,
    bytes         bigint NOT NULL,
    -- fal's seeds exceed bigint; kept as decimal text.
    seed          text,
    nsfw          boolean,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation_id, item_index, image_index)
);
