-- Every replica caches live API keys; a revoked (or deleted) key must leave every cache at
-- once. The revoking transaction announces the key's id on `api_key_revoked`, whatever
-- revoked it (the CLI, or SQL by hand), and each replica's listening connection drops it.
CREATE FUNCTION announce_api_key_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('api_key_revoked', OLD.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_key_revoked
    AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN (NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
          OR NEW.key_hash IS DISTINCT FROM OLD.key_hash
          OR NEW.tenant_id IS DISTINCT FROM OLD.tenant_id)
    EXECUTE FUNCTION announce_api_key_revoked();

CREATE TRIGGER api_key_deleted
    AFTER DELETE ON api_keys
    FOR EACH ROW
    EXECUTE FUNCTION announce_api_key_revoked();
