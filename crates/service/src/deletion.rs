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
    // Running jobs are cancelled on fal first: nobody will want their result.
    for job in service
        .store
        .active_jobs_of_avatar(tenant_id, avatar_id)
        .await?
    {
        if let Err(error) = crate::jobs::cancel_job(service, &job, "the avatar was deleted").await {
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
