//! Avatars: create (with a generated, unique trigger phrase when none is given), list, read
//! and change a tenant's avatars. Deleting one is [`crate::deletion`].

use domain::{Avatar, AvatarId, NewAvatar, TenantId, TriggerPhrase};
use store::{AvatarFilter, AvatarPatch, StoreError, TRIGGER_PHRASE_CONSTRAINT};

use crate::context::Service;
use crate::error::ServiceError;

/// Generated phrases are random; a collision is rare, several in a row practically impossible.
const TRIGGER_PHRASE_ATTEMPTS: usize = 5;

fn trigger_phrase_taken(phrase: &str) -> ServiceError {
    ServiceError::conflict(
        "trigger_phrase_taken",
        format!("another avatar of yours already uses the trigger phrase {phrase:?}"),
    )
    .with_extension("field", "trigger_phrase")
}

/// Creates an avatar, generating a unique trigger phrase when none was given.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
pub async fn create_avatar(
    service: &Service,
    tenant_id: TenantId,
    new: NewAvatar,
) -> Result<Avatar, ServiceError> {
    if let Some(phrase) = &new.trigger_phrase {
        return service
            .store
            .insert_avatar(tenant_id, &new, phrase)
            .await
            .map_err(|error| match error {
                e if e.is_conflict_on(TRIGGER_PHRASE_CONSTRAINT) => {
                    trigger_phrase_taken(phrase.as_str())
                }
                e => e.into(),
            });
    }
    for _ in 0..TRIGGER_PHRASE_ATTEMPTS {
        match service
            .store
            .insert_avatar(tenant_id, &new, &TriggerPhrase::generate())
            .await
        {
            Err(e) if e.is_conflict_on(TRIGGER_PHRASE_CONSTRAINT) => continue,
            result => return result.map_err(Into::into),
        }
    }
    Err(ServiceError::internal(anyhow::anyhow!(
        "no free trigger phrase after {TRIGGER_PHRASE_ATTEMPTS} attempts"
    )))
}

/// One page of the tenant's avatars, newest first, and whether more follow.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
pub async fn list_avatars(
    service: &Service,
    tenant_id: TenantId,
    filter: &AvatarFilter,
    page: crate::PageRequest,
) -> Result<(Vec<Avatar>, bool), ServiceError> {
    let after = page.after.map(AvatarId);
    Ok(service
        .store
        .list_avatars(tenant_id, filter, after, page.limit)
        .await?)
}

/// One avatar of the tenant.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, avatar_id = %avatar_id))]
pub async fn get_avatar(
    service: &Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
) -> Result<Avatar, ServiceError> {
    service
        .store
        .get_avatar(tenant_id, avatar_id)
        .await
        .map_err(ServiceError::avatar_missing(avatar_id))
}

/// Renames an avatar, or changes its trigger phrase while it is untrained.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, avatar_id = %avatar_id))]
pub async fn update_avatar(
    service: &Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
    patch: &AvatarPatch,
) -> Result<Avatar, ServiceError> {
    match service
        .store
        .update_avatar(tenant_id, avatar_id, patch)
        .await
    {
        Ok(Some(avatar)) => Ok(avatar),
        Ok(None) => Err(ServiceError::conflict(
            "trigger_phrase_locked",
            "the trigger phrase is part of a trained model and can no longer change",
        )
        .with_extension("field", "trigger_phrase")),
        Err(StoreError::NotFound) => Err(ServiceError::avatar_not_found(avatar_id)),
        Err(e) if e.is_conflict_on(TRIGGER_PHRASE_CONSTRAINT) => Err(trigger_phrase_taken(
            patch
                .trigger_phrase
                .as_ref()
                .map(|t| t.as_str())
                .unwrap_or_default(),
        )),
        Err(error) => Err(error.into()),
    }
}
