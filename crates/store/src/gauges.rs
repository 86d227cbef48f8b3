//! What operators watch: a snapshot of the work the database holds (jobs by state, backlogs
//! and how far behind the workers are), read with a few bounded aggregate queries, and a hook
//! that hears every job transition once its transaction committed.

use std::sync::Arc;

use domain::{JobKind, JobStatus};
use sqlx::Row;

use crate::{Store, StoreError};

/// Hears every committed job status change (`from != to`).
pub trait TransitionObserver: Send + Sync {
    fn transitioned(&self, kind: JobKind, from: JobStatus, to: JobStatus);
}

/// A status change made inside a transaction, reported once it commits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Changed {
    pub kind: JobKind,
    pub from: JobStatus,
    pub to: JobStatus,
}

/// The observer of a [`Store`], if one was set.
#[derive(Clone, Default)]
pub(crate) struct Observer(Option<Arc<dyn TransitionObserver>>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observer(set)"
        } else {
            "Observer(none)"
        })
    }
}

impl Observer {
    pub(crate) fn committed(&self, transitions: &[Changed]) {
        if let Some(observer) = &self.0 {
            for t in transitions {
                observer.transitioned(t.kind, t.from, t.to);
            }
        }
    }
}

/// The work the database holds, as operators watch it. Ages are in seconds, 0 when nothing
/// waits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkSnapshot {
    /// `(kind, status, count)` of the jobs not finished yet (finished ones are counted as they
    /// finish, by the transitions).
    pub live_jobs: Vec<(String, String, i64)>,
    /// `(kind, count)` of jobs still at fal whose deadline passed: no callback came in the
    /// time they were given, and no reconciliation has settled them yet.
    pub overdue: Vec<(String, i64)>,
    /// Finished jobs whose artifacts are still to be copied into our storage.
    pub custody_backlog: i64,
    /// Finishing jobs whose result is still to be fetched from fal.
    pub result_fetch_backlog: i64,
    /// How long the oldest of those has waited.
    pub custody_oldest_seconds: f64,
    /// How long the oldest event still without a position has waited for the sequencer.
    pub sequencer_lag_seconds: f64,
    /// Deliveries due now to enabled endpoints.
    pub deliveries_due: i64,
    /// How long the oldest of those has been due.
    pub delivery_lag_seconds: f64,
    /// How long this read waited for a pool connection.
    pub acquired_in: std::time::Duration,
}

impl Store {
    /// Reports every committed job transition to `observer` from now on (this handle and its
    /// clones).
    pub fn with_transition_observer(mut self, observer: Arc<dyn TransitionObserver>) -> Self {
        self.observer = Observer(Some(observer));
        self
    }

    /// The work the database holds. Each query reads an index or a grouped count, so a scrape
    /// costs a few milliseconds however long the tables grow.
    pub async fn work_snapshot(&self) -> Result<WorkSnapshot, StoreError> {
        let started = std::time::Instant::now();
        let mut conn = self.pool.acquire().await?;
        let acquired_in = started.elapsed();
        // The statuses are written into the text (they are our constants), so the planner
        // sees that the partial indexes on pending and on checked jobs cover each part: a few
        // milliseconds with a million finished jobs, where a bound array means a full scan.
        let checked: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|s| !s.is_terminal() && *s != JobStatus::Pending)
            .collect();
        let live_jobs = sqlx::query(&format!(
            "SELECT kind, status, count(*) AS n FROM jobs WHERE status = '{pending}'
             GROUP BY kind, status
             UNION ALL
             SELECT kind, status, count(*) FROM jobs WHERE status IN ({checked})
             GROUP BY kind, status",
            pending = JobStatus::Pending.as_str(),
            checked = quoted(&checked),
        ))
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| (row.get("kind"), row.get("status"), row.get("n")))
        .collect();
        // At fal: where a callback can still arrive.
        let overdue = sqlx::query(&format!(
            "SELECT kind, count(*) AS n FROM jobs
             WHERE status IN ({at_fal}) AND deadline_at <= now()
             GROUP BY kind",
            at_fal = quoted(&domain::allowed_from(domain::JobEvent::FalSucceeded)),
        ))
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| (row.get("kind"), row.get("n")))
        .collect();
        // The custody worker's own filter (see `claim_custody`), on its partial index.
        let custody = sqlx::query(
            "SELECT count(*) FILTER (WHERE custody_needed) AS custody,
                    count(*) FILTER (WHERE result_fetch_needed) AS fetch,
                    coalesce(extract(epoch FROM now() - min(updated_at)), 0)::float8 AS oldest
             FROM jobs
             WHERE (custody_needed OR result_fetch_needed)
               AND (status = $1 OR (custody_needed AND status = $2 AND kind = $3))",
        )
        .bind(JobStatus::Finishing.as_str())
        .bind(JobStatus::Failed.as_str())
        .bind(JobKind::Generation.as_str())
        .fetch_one(&mut *conn)
        .await?;
        let sequencer_lag_seconds: f64 = sqlx::query_scalar(
            "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
             FROM outbox_events WHERE position IS NULL",
        )
        .fetch_one(&mut *conn)
        .await?;
        let deliveries = sqlx::query(
            "SELECT count(*) AS due,
                    coalesce(extract(epoch FROM now() - min(d.next_attempt_at)), 0)::float8 AS lag
             FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.enabled",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(WorkSnapshot {
            live_jobs,
            overdue,
            custody_backlog: custody.get("custody"),
            result_fetch_backlog: custody.get("fetch"),
            custody_oldest_seconds: custody.get("oldest"),
            sequencer_lag_seconds,
            deliveries_due: deliveries.get("due"),
            delivery_lag_seconds: deliveries.get("lag"),
            acquired_in,
        })
    }
}

/// `'a', 'b'`: statuses as SQL literals.
fn quoted(statuses: &[JobStatus]) -> String {
    statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
