//! Background workers: the submitter (pending jobs -> fal), the reconciler (overdue webhooks,
//! deadlines, progress), custody (results and artifacts into our storage), the event workers
//! and the janitor. Each claims work with a lease and a fencing token, so any number of
//! replicas can run them.

mod custody;
pub mod janitor;
mod reconciler;
mod submitter;

use std::time::Duration;

use domain::JobEvent;
use store::{JobChanges, JobRecord};
use tokio::task::JoinHandle;

use crate::context::Service;

/// The smallest database pool the service starts with. The sequencer, relay, janitor,
/// submitter, custody and reconciler loops may each hold a connection at the same moment;
/// one more keeps requests (and fal's callbacks) from waiting on all of them. The LISTEN
/// connection is not taken from the pool.
pub const MIN_DATABASE_CONNECTIONS: u32 = 7;

/// How often idle workers look for work they were not woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerIntervals {
    pub idle_poll: Duration,
    pub reconcile_tick: Duration,
    /// Between clean-up rounds (abandoned uploads, deleted blobs).
    pub janitor: Duration,
}

impl Default for WorkerIntervals {
    fn default() -> Self {
        Self {
            idle_poll: Duration::from_secs(1),
            reconcile_tick: Duration::from_secs(1),
            janitor: Duration::from_secs(60),
        }
    }
}

/// The running workers; dropping this stops them.
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}

/// Starts every worker of this process: the job workers when fal is configured, the event
/// workers and the janitor always.
pub fn spawn(service: Service) -> Workers {
    let intervals = service.settings.workers;
    let mut handles = crate::events::spawn(service.clone());
    handles.push(tokio::spawn(janitor::run(
        service.clone(),
        intervals.janitor,
    )));
    if service.fal.is_some() {
        for queue in [JobQueue::Submit, JobQueue::Custody] {
            handles.push(tokio::spawn(drain(service.clone(), queue)));
        }
        handles.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(intervals.reconcile_tick);
            loop {
                ticker.tick().await;
                reconciler::reconcile_due(&service).await;
            }
        }));
    }
    Workers { handles }
}

/// The work the job workers claim, each under a lease.
#[derive(Debug, Clone, Copy)]
enum JobQueue {
    /// Pending jobs to upload and submit.
    Submit,
    /// Results to fetch and artifacts to copy into our storage.
    Custody,
}

/// Claims and handles the queue's jobs until none is left, then waits for a wake-up or the
/// idle poll.
async fn drain(service: Service, queue: JobQueue) {
    let (worker, lease) = (service.worker_id, service.settings.jobs.lease);
    loop {
        loop {
            let claimed = match queue {
                JobQueue::Submit => service.store.claim_upload(worker, lease).await,
                JobQueue::Custody => service.store.claim_custody(worker, lease).await,
            };
            match (claimed, queue) {
                (Ok(Some(job)), JobQueue::Submit) => submitter::submit(&service, job).await,
                (Ok(Some(job)), JobQueue::Custody) => custody::take_custody(&service, job).await,
                (Ok(None), _) => break,
                (Err(error), _) => {
                    tracing::warn!(%error, ?queue, "claiming a job");
                    break;
                }
            }
        }
        tokio::select! {
            _ = service.work.notified() => {},
            _ = tokio::time::sleep(service.settings.workers.idle_poll) => {},
        }
    }
}

pub(crate) async fn record(
    service: &Service,
    job: &JobRecord,
    event: JobEvent,
    fence: i64,
    changes: JobChanges,
    cause: &str,
) {
    if let Err(error) = service
        .store
        .apply_event(job.id, event, Some(fence), &changes, cause)
        .await
    {
        tracing::warn!(%error, cause, "recording a job event");
    }
}

/// Gives the job back for a later attempt (nothing was sent to fal).
pub(crate) async fn defer(service: &Service, job: &JobRecord, after: Duration) {
    if let Err(error) = service.store.defer_lease(job.id, job.fence, after).await {
        tracing::warn!(%error, "deferring a job");
    }
}

/// Ends the job with `failure` through `event`, under the job's own fence.
pub(crate) async fn fail(
    service: &Service,
    job: &JobRecord,
    event: JobEvent,
    failure: crate::JobFailure,
    cause: &str,
) {
    record(service, job, event, job.fence, failure.changes(), cause).await;
}
