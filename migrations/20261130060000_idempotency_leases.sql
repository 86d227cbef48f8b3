-- An Idempotency-Key in flight is held under a lease its request renews while it runs (a
-- request that died stops renewing and its key can be taken over soon after; a slow one is
-- never taken over), by the claim whose token it carries. The resource its request created
-- is bound to it in the creating transaction, so a failure after that commit replays the
-- resource instead of freeing the key for a second, paid, attempt.
ALTER TABLE idempotency_keys
    ADD COLUMN claim_token   uuid,
    ADD COLUMN lease_until   timestamptz,
    ADD COLUMN resource_kind text CHECK (resource_kind IN ('training', 'generation')),
    ADD COLUMN resource_id   uuid;
UPDATE idempotency_keys SET lease_until = created_at + interval '120 seconds'
    WHERE state = 'in_flight';
