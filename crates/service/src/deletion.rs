//! Deleting an avatar: its running trainings are cancelled on fal, its rows deleted (the
//! `avatar.deleted` event written in the same transaction), its blobs queued and purged.

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
    // Running trainings are cancelled on fal first: nobody will want their result.
    for job in service.store.active_trainings(tenant_id, avatar_id).await? {
        if let Err(error) = crate::jobs::cancel_job(service, &job, "the avatar was deleted").await {
            tracing::warn!(training = %job.id, ?error, "cancelling a training of a deleted avatar");
        }
    }
    service
        .store
        .delete_avatar(tenant_id, avatar_id)
        .await
        .map_err(ServiceError::missing_as(|| {
            ServiceError::avatar_not_found(avatar_id)
        }))?;
    crate::workers::janitor::purge_deleted_blobs(service).await;
    Ok(())
}
