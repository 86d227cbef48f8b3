//! The reconciler: jobs whose webhook is overdue or whose deadline passed, and the live
//! progress of jobs someone watches.
//!
//! fal's webhook is how a job's outcome arrives; a status lookup is only a safety net. A job is
//! first looked up once its webhook is overdue (its expected duration plus `FAL_WEBHOOK_GRACE`
//! after submission), then again after `FAL_STATUS_CHECK_INTERVAL`, doubling up to
//! `FAL_STATUS_CHECK_MAX_INTERVAL`. Live progress (queue position, percent) is looked up only
//! for watched jobs, at most once per interval per job, whichever replica does it. Cancels owed
//! to fal are sent again when due, with a growing wait, until fal answers them.

use chrono::Utc;
use domain::{JobEvent, JobStatus};
use store::JobRecord;
use tracing::Instrument;

use super::{claimed, record};
use crate::context::Service;
use crate::error::JobFailure;
use crate::jobs;

/// Most safety-net gaps listed to the store; the last one repeats.
const LISTED_GAPS: u32 = 16;

/// Checks the jobs whose webhook is overdue or whose deadline passed, then looks up the
/// progress of watched jobs.
pub(super) async fn reconcile_due(service: &Service) {
    let settings = &service.settings.jobs;
    let schedule = settings.schedule();
    let gaps: Vec<_> = (1..=LISTED_GAPS)
        .map(|done| schedule.next_check_after(done))
        .collect();
    let (store, interval) = (&service.store, settings.status_check_interval);
    let claim = store.claim_due_checks(service.worker_id, settings.lease, &gaps, interval, 20);
    let Some(jobs) = claimed(claim.await, "jobs to check") else {
        return;
    };
    for job in jobs {
        let span = job_span!("reconcile", &job);
        check(service, &job).instrument(span).await;
    }
    carry_out_due_cancels(service).await;
    look_up_watched(service).await;
}

/// Sends the cancels owed to fal that are due (a caller's, a deadline's, a deleted avatar's
/// that fal did not confirm yet, or whose request id arrived late), whichever replica
/// recorded them, also after a restart.
async fn carry_out_due_cancels(service: &Service) {
    let (store, lease) = (&service.store, service.settings.jobs.lease);
    let claim = store.claim_due_cancels(service.worker_id, lease, 20);
    let Some(jobs) = claimed(claim.await, "owed cancels") else {
        return;
    };
    for job in jobs {
        let span = job_span!("cancel", &job);
        let fence = job.fence;
        let fenced = job.status().is_active().then_some(fence);
        if let Err(error) =
            jobs::carry_out_cancel(service, &job, store::CancelCause::Caller, fenced)
                .instrument(span)
                .await
        {
            tracing::warn!(job = %job.id, ?error, "carrying out an owed cancel");
        }
        let _ = service.store.release_lease(job.id, fence).await;
    }
}

/// Asks fal where each watched job stands (queue position, progress), at most once per
/// interval per job.
async fn look_up_watched(service: &Service) {
    let settings = &service.settings.jobs;
    let (store, interval) = (&service.store, settings.status_check_interval);
    let claim = store.claim_progress_checks(service.worker_id, settings.lease, interval, 20);
    let Some(jobs) = claimed(claim.await, "watched jobs") else {
        return;
    };
    for job in jobs {
        jobs::reconcile_job(service, &job, Some(job.fence)).await;
        let _ = service.store.release_lease(job.id, job.fence).await;
    }
}

/// One overdue job: timed out, interrupted mid-submit, or looked up at fal.
/// Runs in the job's span (see `job_span!`).
async fn check(service: &Service, job: &JobRecord) {
    let fence = job.fence;
    let past_deadline = job.deadline_at.is_some_and(|d| d <= Utc::now());
    if past_deadline {
        jobs::time_out(service, job, fence).await;
    } else if job.status() == JobStatus::Uploading {
        // Its worker died after sending the submit: fal may have the request.
        record(
            service,
            job,
            JobEvent::SubmitOutcomeUnknown,
            fence,
            JobFailure::new(
                "submit_unknown",
                "the worker stopped after sending the submit",
            )
            .changes(),
            "submit interrupted",
        )
        .await;
    } else {
        jobs::reconcile_job(service, job, Some(fence)).await;
    }
    let _ = service.store.release_lease(job.id, fence).await;
}
