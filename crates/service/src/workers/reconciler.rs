//! The reconciler: jobs whose webhook is overdue or whose deadline passed.

use chrono::Utc;
use domain::{JobEvent, JobStatus};
use store::JobRecord;
use tracing::Instrument;

use super::record;
use crate::context::Service;
use crate::error::JobFailure;
use crate::jobs;

/// Checks the jobs whose webhook is overdue or whose deadline passed.
pub(super) async fn reconcile_due(service: &Service) {
    let jobs = match service
        .store
        .claim_due_checks(
            service.worker_id,
            service.settings.jobs.lease,
            service.settings.jobs.status_check_interval,
            20,
        )
        .await
    {
        Ok(jobs) => jobs,
        Err(error) => {
            tracing::warn!(%error, "claiming jobs to check");
            return;
        }
    };
    for job in jobs {
        let span = job_span!("reconcile", &job);
        check(service, &job).instrument(span).await;
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
