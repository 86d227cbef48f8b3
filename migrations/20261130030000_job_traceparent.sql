-- The W3C trace context (`traceparent`) of the request that created a job, so the workers that
-- submit it, take custody of its result and announce it continue the same trace. NULL when
-- traces are not exported or the job predates this column.
ALTER TABLE jobs ADD COLUMN traceparent text;
