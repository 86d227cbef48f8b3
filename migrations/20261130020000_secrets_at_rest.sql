-- Secrets at rest: a copy of the database must not hand out the power to sign our
-- notifications or to complete jobs through fal's callback URL.

-- Webhook signing secrets are sealed (XChaCha20-Poly1305) under a key of the SECRETS_KEYS ring:
-- `key_id` names the key, `sealed` is nonce || ciphertext, bound to the row's endpoint id and
-- id. `secret` holds only rows written before sealing existed (or by a replica of the previous
-- release during a rolling update), until `avatars secrets reencrypt` seals them and clears it.
ALTER TABLE webhook_endpoint_secrets
    ALTER COLUMN secret DROP NOT NULL,
    ADD COLUMN key_id text,
    ADD COLUMN sealed bytea,
    ADD CONSTRAINT webhook_endpoint_secrets_sealed_check
        CHECK ((key_id IS NULL) = (sealed IS NULL) AND (sealed IS NOT NULL OR secret IS NOT NULL));

-- The token in fal's callback URL is derived from the job id under the key ring (an HMAC),
-- never stored. The column stays for one release, so replicas of the previous release keep
-- working during a rolling update, but it holds no token: stored ones are cleared (those jobs
-- correlate by fal's request id) and a trigger blanks any that an older replica writes. A later
-- release drops it.
ALTER TABLE jobs ALTER COLUMN webhook_token SET DEFAULT '';
UPDATE jobs SET webhook_token = '' WHERE webhook_token <> '';
CREATE FUNCTION jobs_forget_webhook_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.webhook_token := '';
    RETURN NEW;
END
$$;
CREATE TRIGGER jobs_forget_webhook_token
    BEFORE INSERT OR UPDATE OF webhook_token ON jobs
    FOR EACH ROW WHEN (NEW.webhook_token <> '') EXECUTE FUNCTION jobs_forget_webhook_token();
