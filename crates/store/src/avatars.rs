use chrono::{DateTime, Utc};
use domain::{
    Avatar, AvatarChange, AvatarId, AvatarKind, AvatarStatus, EventType, JobEvent, JobStatus,
    ModelType, NewAvatar, TenantId,
};
use sqlx::PgConnection;

use crate::error::StoreError;
use crate::events::{insert_event, EventSnapshot};
use crate::jobs::{apply_event_in, JobChanges};
use crate::records::{parse_column, split_page};
use crate::transitions::JobTransition;
use crate::Store;

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
        let model = match (row.model_id, row.model_type.as_deref()) {
            (Some(id), Some(model_type)) => Some(domain::TrainedModel {
                id,
                model_type: parse_column("models", "model_type", model_type, ModelType::parse)?,
                trigger_phrase: row.model_trigger_phrase.unwrap_or_default(),
                training_id: row.model_training_id.unwrap_or_default(),
                artifact_sha256: row.model_artifact_sha256,
                artifact_bytes: row.model_artifact_bytes.map(|b| b as u64),
                finetune_id: row.model_finetune_id,
                trained_at: row.model_trained_at.unwrap_or(row.created_at),
            }),
            _ => None,
        };
        Ok(Avatar {
            id: AvatarId(row.id),
            tenant_id: TenantId(row.tenant_id),
            kind: parse_column("avatars", "kind", &row.kind, AvatarKind::parse)?,
            status: parse_column("avatars", "status", &row.status, AvatarStatus::parse)?,
            name: row.name,
            owner_ref: row.owner_ref,
            trigger_phrase: row.trigger_phrase,
            photo_count: u32::try_from(row.photo_count).unwrap_or(0),
            model,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// What an avatar's status transition reads of its row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockedAvatar {
    pub status: AvatarStatus,
    pub has_model: bool,
}

/// Reads and locks (until the transaction ends) what the avatar's status transition needs:
/// every change of status reads the row this way, asks the domain, and writes the verdict.
pub(crate) async fn lock_avatar(
    conn: &mut PgConnection,
    tenant_id: TenantId,
    id: AvatarId,
) -> Result<Option<LockedAvatar>, StoreError> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "SELECT status, current_model_id IS NOT NULL FROM avatars
         WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(tenant_id.0)
    .bind(id.0)
    .fetch_optional(conn)
    .await?;
    row.map(|(status, has_model)| {
        Ok(LockedAvatar {
            status: parse_column("avatars", "status", &status, AvatarStatus::parse)?,
            has_model,
        })
    })
    .transpose()
}

/// Moves the avatar's status as the domain decides for `change` (made from its locked row).
/// Nothing is written when the status stays; a missing avatar is left alone.
pub(crate) async fn change_avatar_status(
    conn: &mut PgConnection,
    tenant_id: TenantId,
    id: AvatarId,
    change: impl FnOnce(&LockedAvatar) -> AvatarChange,
) -> Result<(), StoreError> {
    let Some(avatar) = lock_avatar(conn, tenant_id, id).await? else {
        return Ok(());
    };
    let verdict = avatar.status.after(change(&avatar));
    if verdict != avatar.status {
        sqlx::query("UPDATE avatars SET status = $2, updated_at = now() WHERE id = $1")
            .bind(id.0)
            .bind(verdict.as_str())
            .execute(conn)
            .await?;
    }
    Ok(())
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

/// A page of an avatar's rows (trainings, generations) matching `filter` (`""` or `AND ...`),
/// newest first; `source` is `<columns> FROM <table>`. `None` when the avatar does not exist.
pub(crate) async fn avatar_page<T>(
    pool: &sqlx::PgPool,
    source: &str,
    filter: &str,
    tenant_id: TenantId,
    avatar_id: AvatarId,
    after: Option<uuid::Uuid>,
    limit: u32,
) -> Result<Option<(Vec<T>, bool)>, StoreError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    if !avatar_exists(pool, tenant_id, avatar_id).await? {
        return Ok(None);
    }
    let sql = format!(
        "SELECT {source}
         WHERE tenant_id = $1 AND avatar_id = $2 {filter} AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    );
    let rows: Vec<T> = sqlx::query_as(&sql)
        .bind(tenant_id.0)
        .bind(avatar_id.0)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(pool)
        .await?;
    Ok(Some(split_page(rows, limit)))
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
        let (rows, has_more) = split_page(rows, limit);
        let avatars = rows
            .into_iter()
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
               AND ($4::text IS NULL OR status = ANY($5))
             RETURNING id",
        )
        .bind(tenant_id.0)
        .bind(id.0)
        .bind(patch.name.as_ref().map(|n| n.as_str()))
        .bind(patch.trigger_phrase.as_ref().map(|t| t.as_str()))
        .bind(
            AvatarStatus::ALL
                .into_iter()
                .filter(|status| status.allows_trigger_phrase_change())
                .map(AvatarStatus::as_str)
                .collect::<Vec<_>>(),
        )
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
    /// Deletes an avatar with everything that holds the person (see the statements below);
    /// its jobs and generations stay as billing records.
    pub async fn delete_avatar(&self, tenant_id: TenantId, id: AvatarId) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
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
        // A job still finishing would keep fal's result for nobody: it ends cancelled, and
        // whatever custody copied for it is discarded (see `Store::discard_artifacts`).
        let finishing: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE tenant_id = $1 AND avatar_id = $2 AND status = $3",
        )
        .bind(tenant_id.0)
        .bind(id.0)
        .bind(JobStatus::Finishing.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = Vec::new();
        for job_id in finishing {
            let cause = "the avatar was deleted";
            let changes = JobChanges {
                error_code: Some("cancelled".into()),
                error_message: Some(cause.into()),
                ..JobChanges::default()
            };
            let transition = JobTransition::new(JobEvent::Cancelled, &changes, cause);
            apply_event_in(&mut tx, job_id, transition, &mut changed).await?;
        }
        for statement in [
            // Every blob that holds the person: photos, caller-supplied training archives,
            // LoRA weights and configs, generated images. The janitor purges them.
            "INSERT INTO blob_deletions (blob_key)
             SELECT blob_key FROM photos WHERE tenant_id = $1 AND avatar_id = $2
             UNION SELECT input_blob_key FROM jobs
                 WHERE tenant_id = $1 AND avatar_id = $2 AND input_blob_key IS NOT NULL
             UNION SELECT artifact_key FROM models
                 WHERE tenant_id = $1 AND avatar_id = $2 AND artifact_key IS NOT NULL
             UNION SELECT config_key FROM models
                 WHERE tenant_id = $1 AND avatar_id = $2 AND config_key IS NOT NULL
             UNION SELECT i.blob_key FROM generation_images i
                 JOIN generations g ON g.id = i.generation_id
                 WHERE g.tenant_id = $1 AND g.avatar_id = $2
             ON CONFLICT (blob_key) DO NOTHING",
            "DELETE FROM generation_images i USING generations g
             WHERE g.id = i.generation_id AND g.tenant_id = $1 AND g.avatar_id = $2",
            // Generations and jobs stay as billing records (endpoint, preset, counts, cost,
            // status, timings) without personal data: prompts are what the caller wrote about
            // the person, the trigger phrase names them, results point at their images and
            // weights.
            "UPDATE generations SET request = request - 'prompts' - 'prompt' - 'negative_prompt'
             WHERE tenant_id = $1 AND avatar_id = $2",
            "UPDATE jobs SET params = params - 'prompt' - 'negative_prompt' - 'images_data_url'
                     - 'trigger_phrase' - 'trigger_word',
                 trigger_phrase = NULL, input_blob_key = NULL, result = NULL,
                 custody_needed = false, result_fetch_needed = false, updated_at = now()
             WHERE tenant_id = $1 AND avatar_id = $2",
        ] {
            sqlx::query(statement)
                .bind(tenant_id.0)
                .bind(id.0)
                .execute(&mut *tx)
                .await?;
        }
        let result = sqlx::query("DELETE FROM avatars WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id.0)
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_event(
            &mut tx,
            tenant_id.0,
            EventType::AvatarDeleted,
            None,
            Some(id.0),
            &EventSnapshot::Avatar {
                avatar: Box::new(avatar),
            },
        )
        .await?;
        tx.commit().await?;
        self.observer.committed(&changed);
        Ok(())
    }
}
