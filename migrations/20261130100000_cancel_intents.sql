-- A cancel the service owes fal is recorded before fal is called, and kept until fal answers
-- it (202, ALREADY_COMPLETED or 404) or the attempts run out: the reconciler retries a due
-- one, whichever replica runs it, also after a restart. `cancel_due_at` is set while a cancel
-- is owed (the time of its next attempt); `cancel_outcome` says how it ended.
ALTER TABLE jobs
    ADD COLUMN cancel_due_at   timestamptz,
    ADD COLUMN cancel_cause    text CHECK (cancel_cause IN ('caller', 'deadline', 'avatar_deleted')),
    ADD COLUMN cancel_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN cancel_outcome  text CHECK (cancel_outcome IN
        ('requested', 'already_completed', 'not_found', 'not_submitted', 'unconfirmed'));
CREATE INDEX jobs_cancel_due ON jobs (cancel_due_at) WHERE cancel_due_at IS NOT NULL;
