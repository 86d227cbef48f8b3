//! Background workers: the submitter (pending jobs -> fal), the reconciler (overdue webhooks,
//! deadlines, progress), custody (results and artifacts into our storage), the event workers
//! and the janitor. Each claims work with a lease and a fencing token, so any number of
//! replicas can run them.

/// The span a worker handles `job` in: a root of its own, continuing the trace of the request
/// that created the job (when traces are exported), so one training is one trace.
macro_rules! job_span {
    ($name:literal, $job:expr) => {{
        let job: &store::JobRecord = $job;
        let span = tracing::info_span!(
            parent: None,
            $name,
            job_id = %job.id,
            tenant_id = %job.tenant_id,
            avatar_id = ?job.avatar_id,
            kind = job.kind().as_str(),
        );
        crate::trace_context::continue_trace(&span, job.traceparent.as_deref());
        span
    }};
}

mod custody;
pub mod janitor;
mod reconciler;
mod submitter;

use std::time::Duration;

use domain::JobEvent;
use store::{JobChanges, JobRecord};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::context::Service;
pub use crate::context::WorkerIntervals;

/// What a claim returned, or `None` (with a warning naming `what`) when it failed: the
/// worker's next round claims again.
fn claimed<T>(result: Result<T, store::StoreError>, what: &str) -> Option<T> {
    result
        .inspect_err(|error| tracing::warn!(%error, "claiming {what}"))
        .ok()
}

/// The running workers; dropping this stops them at once, [`Workers::stop`] cleanly.
pub struct Workers {
    service: Service,
    /// The job workers, which finish the job in hand when asked to stop.
    job_workers: Vec<JoinHandle<()>>,
    /// Everything else (event workers, janitor): stopped at once, their work is resumable.
    others: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Workers {
    /// Stops cleanly: no new work is claimed, each job worker finishes the job in hand (for up
    /// to `grace`), and every lease this process holds is handed back, so another replica takes
    /// its work over at once instead of waiting for the leases to run out.
    pub async fn stop(mut self, grace: Duration) {
        self.stop.send_replace(true);
        for handle in self.others.drain(..) {
            handle.abort();
        }
        let mut job_workers = std::mem::take(&mut self.job_workers);
        let finished = tokio::time::timeout(grace, async {
            for handle in &mut job_workers {
                let _ = handle.await;
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!("job workers did not finish in time; their jobs go back unfinished");
            for handle in &job_workers {
                handle.abort();
            }
        }
        match self
            .service
            .store
            .release_leases(self.service.worker_id)
            .await
        {
            Ok(released) => tracing::info!(released, "leases handed back"),
            Err(error) => tracing::warn!(%error, "handing back leases; they run out by themselves"),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for handle in self.job_workers.iter().chain(&self.others) {
            handle.abort();
        }
    }
}

/// Starts every worker of this process: the job workers when fal is configured, the event
/// workers and the janitor always.
pub fn spawn(service: Service) -> Workers {
    let intervals = service.settings.workers;
    let (stop, stopping) = watch::channel(false);
    let mut others = crate::events::spawn(service.clone());
    others.push(tokio::spawn(janitor::run(
        service.clone(),
        intervals.janitor,
    )));
    let mut job_workers = Vec::new();
    if service.fal.is_some() {
        for queue in [JobQueue::Submit, JobQueue::Custody] {
            job_workers.push(tokio::spawn(drain(
                service.clone(),
                queue,
                stopping.clone(),
            )));
        }
        let (reconciling, mut stopping) = (service.clone(), stopping);
        job_workers.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(intervals.reconcile_tick);
            while !*stopping.borrow() {
                tokio::select! {
                    _ = ticker.tick() => reconciler::reconcile_due(&reconciling).await,
                    _ = stopping.changed() => {}
                }
            }
        }));
    }
    Workers {
        service,
        job_workers,
        others,
        stop,
    }
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
async fn drain(service: Service, queue: JobQueue, mut stopping: watch::Receiver<bool>) {
    let (worker, lease) = (service.worker_id, service.settings.jobs.lease);
    while !*stopping.borrow() {
        while !*stopping.borrow() {
            let claimed = match queue {
                JobQueue::Submit => service.store.claim_upload(worker, lease).await,
                JobQueue::Custody => service.store.claim_custody(worker, lease).await,
            };
            match (claimed, queue) {
                (Ok(Some(job)), JobQueue::Submit) => {
                    let span = job_span!("submit_job", &job);
                    // Building the archive, uploading it and submitting may outlast one lease:
                    // it is renewed while they run, so no other replica redoes the work.
                    let _renewing = LeaseHeartbeat::start(&service, &job);
                    submitter::submit(&service, job).instrument(span).await
                }
                (Ok(Some(job)), JobQueue::Custody) => {
                    let span = job_span!("custody", &job);
                    custody::take_custody(&service, job).instrument(span).await
                }
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
            _ = stopping.changed() => {},
        }
    }
}

/// Renews a job's lease every third of its length while a worker works on it; stops when
/// dropped or when the lease is no longer the worker's (fenced out, handed on, finished).
struct LeaseHeartbeat(JoinHandle<()>);

impl LeaseHeartbeat {
    fn start(service: &Service, job: &JobRecord) -> Self {
        let (service, id, fence) = (service.clone(), job.id, job.fence);
        let lease = service.settings.jobs.lease;
        Self(tokio::spawn(async move {
            let every = (lease / 3).max(Duration::from_millis(10));
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match service
                    .store
                    .renew_lease(id, service.worker_id, fence, lease)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(error) => tracing::warn!(%error, job = %id, "renewing a job lease"),
                }
            }
        }))
    }
}

impl Drop for LeaseHeartbeat {
    fn drop(&mut self) {
        self.0.abort();
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
    match service
        .store
        .apply_event(job.id, event, Some(fence), &changes, cause)
        .await
    {
        // fal may have called back before its request id was stored here.
        Ok(store::EventOutcome::Applied(now))
            if job.fal_request_id.is_none() && now.fal_request_id.is_some() =>
        {
            crate::fal_webhook::apply_kept_callbacks(service, &now).await;
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, cause, "recording a job event"),
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
