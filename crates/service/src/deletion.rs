//! Deleting an avatar erases the person: its running trainings and generation items are
//! cancelled on fal, then in one transaction (with the `avatar.deleted` event) its photos,
//! models and generated-image rows are deleted, every blob holding the person (photos, caller
//! archives, LoRA weights and configs, generated images) is queued for deletion, and its jobs
//! and generations are kept as billing records stripped of prompts, trigger phrase and
//! results. The queued blobs are purged at once (the janitor retries what fails).

use domain::{AvatarId, TenantId};

use crate::context::Service;
use crate::error::ServiceError;

/// Deletes an avatar with everything it holds.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, avatar_id = %avatar_id))]
pub async fn delete_avatar(
    service: &Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
) -> Result<(), ServiceError> {
    // Running jobs are cancelled on fal first: nobody will want their result. The cancel is
    // recorded as owed before fal is called, so a cancel fal does not confirm (or one whose
    // request id is not known yet, mid-submit) is retried by the reconciler; the job itself
    // ends here at once.
    for job in service
        .store
        .active_jobs_of_avatar(tenant_id, avatar_id)
        .await?
    {
        if let Err(error) = cancel_for_deletion(service, &job).await {
            tracing::warn!(job = %job.id, ?error, "cancelling a job of a deleted avatar");
        }
    }
    service
        .store
        .delete_avatar(tenant_id, avatar_id)
        .await
        .map_err(ServiceError::avatar_missing(avatar_id))?;
    crate::workers::janitor::purge_deleted_blobs(service).await;
    Ok(())
}

/// Records the cancel a deleted avatar's job owes fal and carries it out; the job ends
/// cancelled here even while fal has not confirmed (the cancel stays owed).
async fn cancel_for_deletion(
    service: &Service,
    job: &store::JobRecord,
) -> Result<(), ServiceError> {
    let Some(job) = service
        .store
        .record_cancel_intent(job.id, store::CancelCause::AvatarDeleted)
        .await?
    else {
        return Ok(());
    };
    let job = crate::jobs::carry_out_cancel(service, &job, store::CancelCause::AvatarDeleted, None)
        .await?;
    // Still running at fal as far as we know (a finishing job is settled by the deletion).
    if job.status().is_active() && job.status() != domain::JobStatus::Finishing {
        let cause = "the avatar was deleted";
        service
            .store
            .apply_event(
                job.id,
                domain::JobEvent::Cancelled,
                None,
                &crate::JobFailure::new("cancelled", cause).changes(),
                cause,
            )
            .await?;
    }
    Ok(())
}
