use chrono::{DateTime, Utc};
use domain::{Avatar, AvatarId, AvatarKind, AvatarStatus, NewAvatar, TenantId};

use crate::{Store, StoreError};

/// The unique index that keeps trigger phrases distinct within a tenant.
pub const TRIGGER_PHRASE_CONSTRAINT: &str = "avatars_tenant_trigger_phrase_key";

/// Narrows an avatar listing.
#[derive(Debug, Clone, Default)]
pub struct AvatarFilter {
    pub owner_ref: Option<String>,
    pub status: Option<AvatarStatus>,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AvatarPatch {
    pub name: Option<domain::AvatarName>,
    pub trigger_phrase: Option<domain::TriggerPhrase>,
}

#[derive(sqlx::FromRow)]
struct AvatarRow {
    id: uuid::Uuid,
    tenant_id: uuid::Uuid,
    name: String,
    kind: String,
    owner_ref: Option<String>,
    trigger_phrase: String,
    status: String,
    photo_count: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    model_id: Option<uuid::Uuid>,
    model_type: Option<String>,
    model_trigger_phrase: Option<String>,
    model_training_id: Option<uuid::Uuid>,
    model_artifact_sha256: Option<String>,
    model_artifact_bytes: Option<i64>,
    model_finetune_id: Option<String>,
    model_trained_at: Option<DateTime<Utc>>,
}

/// A new avatar's columns: it has no model yet.
const NEW_AVATAR_COLUMNS: &str = "id, tenant_id, name, kind, owner_ref, trigger_phrase, status, \
     photo_count, created_at, updated_at, NULL::uuid AS model_id, NULL::text AS model_type, \
     NULL::text AS model_trigger_phrase, NULL::uuid AS model_training_id, \
     NULL::text AS model_artifact_sha256, NULL::bigint AS model_artifact_bytes, \
     NULL::text AS model_finetune_id, NULL::timestamptz AS model_trained_at";

/// The avatar's columns with its current model's, for `FROM avatars a LEFT JOIN models m`.
const AVATAR_SELECT: &str =
    "SELECT a.id, a.tenant_id, a.name, a.kind, a.owner_ref, a.trigger_phrase, \
     a.status, a.photo_count, a.created_at, a.updated_at, m.id AS model_id, \
     m.model_type, m.trigger_phrase AS model_trigger_phrase, m.training_id AS model_training_id, \
     m.artifact_sha256 AS model_artifact_sha256, m.artifact_bytes AS model_artifact_bytes, \
     m.finetune_id AS model_finetune_id, m.created_at AS model_trained_at \
     FROM avatars a LEFT JOIN models m ON m.id = a.current_model_id";

impl TryFrom<AvatarRow> for Avatar {
    type Error = StoreError;

    fn try_from(row: AvatarRow) -> Result<Self, StoreError> {
        // The table's CHECK constraints make these unreachable unless the schema and the code
        // disagree; report that as a decode error rather than panicking.
        let corrupt = |column: &str, value: &str| {
            StoreError::Database(sqlx::Error::Decode(
                format!("avatars.{column} holds unknown value {value:?}").into(),
            ))
        };
        Ok(Avatar {
            id: AvatarId(row.id),
            tenant_id: TenantId(row.tenant_id),
            kind: AvatarKind::parse(&row.kind).ok_or_else(|| corrupt("kind", &row.kind))?,
            status: AvatarStatus::parse(&row.status)
                .ok_or_else(|| corrupt("status", &row.status))?,
            name: row.name,
            owner_ref: row.owner_ref,
            trigger_phrase: row.trigger_phrase,
            photo_count: u32::try_from(row.photo_count).unwrap_or(0),
            model: match (
                row.model_id,
                row.model_type.as_deref().and_then(domain::ModelType::parse),
            ) {
                (Some(id), Some(model_type)) => Some(domain::TrainedModel {
                    id,
                    model_type,
                    trigger_phrase: row.model_trigger_phrase.unwrap_or_default(),
                    training_id: row.model_training_id.unwrap_or_default(),
                    artifact_sha256: row.model_artifact_sha256,
                    artifact_bytes: row.model_artifact_bytes.map(|b| b as u64),
                    finetune_id: row.model_finetune_id,
                    trained_at: row.model_trained_at.unwrap_or(row.created_at),
                }),
                _ => None,
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Whether the tenant has this avatar (lists of its children tell "none" from "no avatar").
pub(crate) async fn avatar_exists(
    pool: &sqlx::PgPool,
    tenant_id: TenantId,
    id: AvatarId,
) -> Result<bool, StoreError> {
    let found: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM avatars WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id.0)
            .bind(id.0)
            .fetch_optional(pool)
            .await?;
    Ok(found.is_some())
}

pub(crate) async fn fetch_avatar(
    conn: &mut sqlx::PgConnection,
    tenant_id: TenantId,
    id: AvatarId,
) -> Result<Avatar, StoreError> {
    let row: Option<AvatarRow> = sqlx::query_as(&format!(
        "{AVATAR_SELECT} WHERE a.tenant_id = $1 AND a.id = $2"
    ))
    .bind(tenant_id.0)
    .bind(id.0)
    .fetch_optional(conn)
    .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

impl Store {
    /// Inserts an avatar with the given trigger phrase. A phrase already used in the tenant is a
    /// `Conflict` on [`TRIGGER_PHRASE_CONSTRAINT`].
    pub async fn insert_avatar(
        &self,
        tenant_id: TenantId,
        new: &NewAvatar,
        trigger_phrase: &domain::TriggerPhrase,
    ) -> Result<Avatar, StoreError> {
        let row: AvatarRow = sqlx::query_as(&format!(
            "INSERT INTO avatars (id, tenant_id, name, kind, owner_ref, trigger_phrase)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING {NEW_AVATAR_COLUMNS}"
        ))
        .bind(AvatarId::new().0)
        .bind(tenant_id.0)
        .bind(new.name.as_str())
        .bind(new.kind.as_str())
        .bind(new.owner_ref.as_ref().map(|o| o.as_str()))
        .bind(trigger_phrase.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from_write)?;
        row.try_into()
    }

    pub async fn get_avatar(
        &self,
        tenant_id: TenantId,
        id: AvatarId,
    ) -> Result<Avatar, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_avatar(&mut conn, tenant_id, id).await
    }

    /// One page of a tenant's avatars, newest first, starting after `after`. Returns at most
    /// `limit` avatars and whether more follow.
    pub async fn list_avatars(
        &self,
        tenant_id: TenantId,
        filter: &AvatarFilter,
        after: Option<AvatarId>,
        limit: u32,
    ) -> Result<(Vec<Avatar>, bool), StoreError> {
        let rows: Vec<AvatarRow> = sqlx::query_as(&format!(
            "{AVATAR_SELECT}
             WHERE a.tenant_id = $1
               AND ($2::uuid IS NULL OR a.id < $2)
               AND ($3::text IS NULL OR a.owner_ref = $3)
               AND ($4::text IS NULL OR a.status = $4)
             ORDER BY a.id DESC
             LIMIT $5"
        ))
        .bind(tenant_id.0)
        .bind(after.map(|a| a.0))
        .bind(filter.owner_ref.as_deref())
        .bind(filter.status.map(AvatarStatus::as_str))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let has_more = rows.len() > limit as usize;
        let avatars = rows
            .into_iter()
            .take(limit as usize)
            .map(Avatar::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((avatars, has_more))
    }

    /// Applies a patch. A trigger phrase change is refused (`Ok(None)`) unless the avatar is
    /// still untrained at the moment of the update, so a training that starts concurrently
    /// cannot be given a phrase its model was not trained with.
    pub async fn update_avatar(
        &self,
        tenant_id: TenantId,
        id: AvatarId,
        patch: &AvatarPatch,
    ) -> Result<Option<Avatar>, StoreError> {
        let row: Option<uuid::Uuid> = sqlx::query_scalar(
            "UPDATE avatars SET
                 name = coalesce($3, name),
                 trigger_phrase = coalesce($4, trigger_phrase),
                 updated_at = now()
             WHERE tenant_id = $1 AND id = $2
               AND ($4::text IS NULL OR status IN ('draft', 'ready'))
             RETURNING id",
        )
        .bind(tenant_id.0)
        .bind(id.0)
        .bind(patch.name.as_ref().map(|n| n.as_str()))
        .bind(patch.trigger_phrase.as_ref().map(|t| t.as_str()))
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from_write)?;
        match row {
            Some(_) => Ok(Some(self.get_avatar(tenant_id, id).await?)),
            None => {
                // Tell "no such avatar" from "phrase locked" for the caller.
                self.get_avatar(tenant_id, id).await?;
                Ok(None)
            }
        }
    }

    /// Deletes the avatar and its photos, queueing their blobs for deletion and announcing
    /// `avatar.deleted` in the same transaction.
    pub async fn delete_avatar(&self, tenant_id: TenantId, id: AvatarId) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let locked: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM avatars WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        )
        .bind(tenant_id.0)
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        if locked.is_none() {
            return Err(StoreError::NotFound);
        }
        let avatar = fetch_avatar(&mut tx, tenant_id, id).await?;
        sqlx::query(
            "INSERT INTO blob_deletions (blob_key)
             SELECT blob_key FROM photos WHERE tenant_id = $1 AND avatar_id = $2
             ON CONFLICT (blob_key) DO NOTHING",
        )
        .bind(tenant_id.0)
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        let result = sqlx::query("DELETE FROM avatars WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id.0)
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        crate::events::insert_event(
            &mut tx,
            tenant_id.0,
            "avatar.deleted",
            None,
            Some(id.0),
            &crate::events::EventSnapshot::Avatar {
                avatar: Box::new(avatar),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
