//! Retention: old rows the service no longer needs, deleted in small batches.
//!
//! Every batch is its own short transaction: it picks at most `rows` rows through an index,
//! locks them with `FOR UPDATE SKIP LOCKED` (a row another transaction holds is left for a
//! later round, never waited for) and deletes them by `ctid`. A batch waits at most
//! `lock_timeout` for any other lock (the cascade to an event's deliveries, say); past that it
//! gives up and the trim ends for this round. So no batch holds locks for longer than it takes
//! to delete `rows` rows, and the trim never blocks the service's own writes for long.

use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::Store;

/// One kind of row the janitor trims, with how long it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trim {
    /// Sequenced outbox events (with their deliveries and attempts) created more than
    /// `delivered` ago whose every delivery succeeded (or that had none), and those created more
    /// than `failed` ago whose deliveries ended, one or more of them failed (a failed delivery
    /// can be replayed until then). An event with a delivery still pending, to a disabled
    /// endpoint too, is kept.
    OutboxEvents {
        delivered: Duration,
        failed: Duration,
    },
    /// fal callbacks of our jobs received more than this ago, once their job is finished (or
    /// gone).
    FalCallbacks(Duration),
    /// fal callbacks for requests that are not ours, received more than this ago.
    UnknownCallbacks(Duration),
    /// Idempotency keys whose request finished, first used more than this ago. A key still in
    /// flight is kept.
    IdempotencyKeys(Duration),
    /// Events of jobs finished more than this ago.
    JobEvents(Duration),
    /// Webhook signing secrets expired (out of their rotation's overlap) more than this ago.
    ExpiredSecrets(Duration),
}

impl Trim {
    /// The table the trim deletes from (what the metrics and logs call it).
    pub fn table(&self) -> &'static str {
        match self {
            Trim::OutboxEvents { .. } => "outbox_events",
            Trim::FalCallbacks(_) => "webhook_inbox",
            Trim::UnknownCallbacks(_) => "webhook_inbox_unknown",
            Trim::IdempotencyKeys(_) => "idempotency_keys",
            Trim::JobEvents(_) => "job_events",
            Trim::ExpiredSecrets(_) => "webhook_endpoint_secrets",
        }
    }

    /// Every table a trim deletes from, as [`Trim::table`] names them.
    pub const TABLES: [&'static str; 6] = [
        "outbox_events",
        "webhook_inbox",
        "webhook_inbox_unknown",
        "idempotency_keys",
        "job_events",
        "webhook_endpoint_secrets",
    ];

    /// The batch's statement. A row is checked against what must keep it (a pending delivery,
    /// an unfinished job) through a subquery per row (`OFFSET 0` keeps the planner from turning
    /// it into a join): one index probe per candidate, where a join planned from statistics
    /// that saw few pending deliveries may scan all of them for every candidate.
    ///
    /// The statement: `$1` is the horizon in seconds, `$2` the batch size, `$3` (outbox
    /// events only) the horizon of events with a failed delivery.
    fn statement(&self) -> String {
        match self {
            Trim::OutboxEvents { .. } => "DELETE FROM outbox_events WHERE ctid = ANY(ARRAY(
                 SELECT e.ctid FROM outbox_events e
                 WHERE e.position IS NOT NULL
                   AND e.created_at < now() - make_interval(secs => $1)
                   AND NOT EXISTS (
                       SELECT 1 FROM webhook_deliveries d
                       WHERE d.event_id = e.id
                         AND (d.status = 'pending'
                              OR (d.status = 'failed'
                                  AND e.created_at >= now() - make_interval(secs => $3)))
                       OFFSET 0)
                 ORDER BY e.created_at
                 LIMIT $2
                 FOR UPDATE OF e SKIP LOCKED))"
                .to_string(),
            Trim::FalCallbacks(_) => "DELETE FROM webhook_inbox WHERE ctid = ANY(ARRAY(
                 SELECT i.ctid FROM webhook_inbox i
                 WHERE i.outcome <> 'unknown_request'
                   AND i.received_at < now() - make_interval(secs => $1)
                   AND NOT EXISTS (
                       SELECT 1 FROM jobs j WHERE j.id = i.job_id AND j.finished_at IS NULL
                       OFFSET 0)
                 ORDER BY i.received_at
                 LIMIT $2
                 FOR UPDATE OF i SKIP LOCKED))"
                .to_string(),
            Trim::UnknownCallbacks(_) => oldest_first(
                "webhook_inbox",
                "outcome = 'unknown_request'",
                "received_at",
            ),
            Trim::IdempotencyKeys(_) => {
                oldest_first("idempotency_keys", "state = 'done'", "created_at")
            }
            Trim::JobEvents(_) => "DELETE FROM job_events WHERE ctid = ANY(ARRAY(
                 SELECT e.ctid FROM job_events e JOIN jobs j ON j.id = e.job_id
                 WHERE e.created_at < now() - make_interval(secs => $1)
                   AND j.finished_at < now() - make_interval(secs => $1)
                 ORDER BY e.created_at
                 LIMIT $2
                 FOR UPDATE OF e SKIP LOCKED))"
                .to_string(),
            Trim::ExpiredSecrets(_) => {
                oldest_first("webhook_endpoint_secrets", "true", "expires_at")
            }
        }
    }

    /// The statement's horizon, and the second one of outbox events.
    fn horizons(&self) -> (Duration, Option<Duration>) {
        match *self {
            Trim::OutboxEvents { delivered, failed } => (delivered, Some(failed.max(delivered))),
            Trim::FalCallbacks(h)
            | Trim::UnknownCallbacks(h)
            | Trim::IdempotencyKeys(h)
            | Trim::JobEvents(h)
            | Trim::ExpiredSecrets(h) => (h, None),
        }
    }
}

/// The batch statement of a trim that keeps nothing but by age: the oldest `$2` rows of `table`
/// matching `filter` whose `age` column is more than `$1` seconds old.
fn oldest_first(table: &str, filter: &str, age: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM {table}
             WHERE {filter} AND {age} < now() - make_interval(secs => $1)
             ORDER BY {age}
             LIMIT $2
             FOR UPDATE SKIP LOCKED))"
    )
}

/// How a trim deletes: batch size and how long one batch may wait for a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimBatches {
    /// Rows one batch (one transaction) deletes at most.
    pub rows: u32,
    /// Longest a batch waits for a lock before it gives up.
    pub lock_timeout: Duration,
}

impl Default for TrimBatches {
    fn default() -> Self {
        Self {
            rows: 1000,
            lock_timeout: Duration::from_secs(1),
        }
    }
}

/// What one trim did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrimReport {
    /// Rows deleted from the trimmed table (cascaded rows not counted).
    pub rows: u64,
    /// Transactions committed.
    pub batches: u64,
    /// The longest of those transactions, begin to commit: the longest any row lock of the
    /// trim was held.
    pub longest_batch: Duration,
    /// A batch gave up waiting for a lock (the rest is left for the next round).
    pub lock_timed_out: bool,
}

/// `SQLSTATE 55P03`: a lock was not granted within `lock_timeout`.
fn is_lock_timeout(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03")
}

/// What a batch statement returned: rows deleted, or the lines of its plan.
struct Ran {
    deleted: u64,
    lines: Vec<String>,
}

/// Runs one batch of `trim` (behind `prefix`, such as `EXPLAIN`) in `tx`, waiting at most the
/// lock timeout for any lock. The statement is not kept prepared: a cached generic plan knows
/// neither the batch size nor the horizons, and may read a whole table where a plan made for
/// the values walks the index for just one batch.
async fn trim_in(
    tx: &mut sqlx::PgConnection,
    prefix: &str,
    trim: Trim,
    batches: TrimBatches,
) -> Result<Ran, StoreError> {
    use sqlx::Row;
    let (first, second) = trim.horizons();
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", batches.lock_timeout.as_millis().max(1)))
        .execute(&mut *tx)
        .await?;
    let sql = format!("{prefix}{}", trim.statement());
    let mut statement = sqlx::query(&sql)
        .persistent(false)
        .bind(first.as_secs_f64())
        .bind(i64::from(batches.rows.max(1)));
    if let Some(second) = second {
        statement = statement.bind(second.as_secs_f64());
    }
    if prefix.is_empty() {
        let deleted = statement.execute(&mut *tx).await?.rows_affected();
        return Ok(Ran {
            deleted,
            lines: Vec::new(),
        });
    }
    let lines = statement
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    Ok(Ran { deleted: 0, lines })
}

impl Store {
    /// Deletes at most `batches.rows` rows `trim` selects, in one transaction. Returns how
    /// many were deleted.
    pub async fn trim_batch(&self, trim: Trim, batches: TrimBatches) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let deleted = trim_in(&mut tx, "", trim, batches).await?.deleted;
        tx.commit().await?;
        Ok(deleted)
    }

    /// The plan of one batch of `trim` as it runs (`EXPLAIN ANALYZE`), in a transaction that
    /// is rolled back: what a batch reads to find the rows it deletes.
    pub async fn explain_trim_batch(
        &self,
        trim: Trim,
        batches: TrimBatches,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin().await?;
        let plan = trim_in(
            &mut tx,
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ",
            trim,
            batches,
        )
        .await?;
        tx.rollback().await?;
        Ok(plan.lines)
    }

    /// Deletes every row `trim` selects, batch after batch, until a batch finds fewer than a
    /// full batch or waits too long for a lock.
    pub async fn trim(&self, trim: Trim, batches: TrimBatches) -> Result<TrimReport, StoreError> {
        let mut report = TrimReport::default();
        loop {
            let started = Instant::now();
            let deleted = match self.trim_batch(trim, batches).await {
                Ok(deleted) => deleted,
                Err(StoreError::Database(error)) if is_lock_timeout(&error) => {
                    report.lock_timed_out = true;
                    return Ok(report);
                }
                Err(error) => return Err(error),
            };
            report.longest_batch = report.longest_batch.max(started.elapsed());
            report.batches += 1;
            report.rows += deleted;
            if deleted < u64::from(batches.rows.max(1)) {
                return Ok(report);
            }
        }
    }

    /// Claims up to `limit` blob deletions that are due, oldest due first: each is moved
    /// `lease` into the future, so no other janitor takes it meanwhile, and comes back then if
    /// this one dies mid-way. Returns each key with the attempts made so far.
    pub async fn claim_blob_deletions(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<(String, i32)>, StoreError> {
        Ok(sqlx::query_as(
            "UPDATE blob_deletions SET next_attempt_at = now() + make_interval(secs => $2)
             WHERE blob_key = ANY(ARRAY(
                 SELECT blob_key FROM blob_deletions
                 WHERE next_attempt_at <= now()
                 ORDER BY next_attempt_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED))
             RETURNING blob_key, attempts",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// The blob is gone: forgets its deletion.
    pub async fn blob_deleted(&self, blob_key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM blob_deletions WHERE blob_key = $1")
            .bind(blob_key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deleting the blob failed with `error`: counts the attempt and tries again after
    /// `retry_after`.
    pub async fn blob_deletion_failed(
        &self,
        blob_key: &str,
        retry_after: Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE blob_deletions
             SET attempts = attempts + 1,
                 next_attempt_at = now() + make_interval(secs => $2),
                 last_error = left($3, 500)
             WHERE blob_key = $1",
        )
        .bind(blob_key)
        .bind(retry_after.as_secs_f64())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
