//! Trained models: created when a training's artifacts are in our custody.

use domain::{AvatarChange, AvatarStatus, EventType, ModelType};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::avatars::LockedAvatar;
use crate::error::StoreError;
use crate::events::{EventSnapshot, INSERT_OUTBOX_EVENT};
use crate::jobs::complete_custody_in;
use crate::records::{parse_column, JobRecord, ModelRecord, MODEL_COLUMNS};
use crate::Store;

/// A model to record for a finished training.
#[derive(Debug, Clone)]
pub struct NewModel {
    pub model_type: ModelType,
    pub trigger_phrase: String,
    pub artifact_key: Option<String>,
    pub artifact_sha256: Option<String>,
    pub artifact_bytes: Option<u64>,
    pub config_key: Option<String>,
    pub fal_artifact_url: Option<String>,
    pub finetune_id: Option<String>,
}

/// Records the model of the succeeded training `job`, makes it the avatar's current model (in
/// the status the domain gives a trained avatar) and announces `training.succeeded` with it,
/// inside the caller's transaction. A training has at most one model: a repeat changes nothing.
pub(crate) async fn record_model_in(
    conn: &mut PgConnection,
    job: &JobRecord,
    model: &NewModel,
) -> Result<(), StoreError> {
    // The model, and the avatar's row locked for its status transition: one statement.
    let recorded: Option<RecordedModel> = sqlx::query_as(&format!(
        "WITH recorded AS (
             INSERT INTO models (id, tenant_id, avatar_id, training_id, model_type, trigger_phrase,
                 artifact_key, artifact_sha256, artifact_bytes, config_key, fal_artifact_url, finetune_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (training_id) DO NOTHING
             RETURNING {MODEL_COLUMNS}),
         avatar AS (
             SELECT status, current_model_id IS NOT NULL AS has_model FROM avatars
             WHERE tenant_id = $2 AND id = $3 FOR UPDATE)
         SELECT recorded.*, (SELECT status FROM avatar) AS avatar_status,
             (SELECT has_model FROM avatar) AS avatar_has_model
         FROM recorded"
    ))
    .bind(Uuid::now_v7())
    .bind(job.tenant_id)
    .bind(job.avatar_id)
    .bind(job.id)
    .bind(model.model_type.as_str())
    .bind(&model.trigger_phrase)
    .bind(&model.artifact_key)
    .bind(&model.artifact_sha256)
    .bind(model.artifact_bytes.map(|b| b as i64))
    .bind(&model.config_key)
    .bind(&model.fal_artifact_url)
    .bind(&model.finetune_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(recorded) = recorded else {
        return Ok(());
    };
    let avatar = match (job.avatar_id, recorded.avatar_status.as_deref()) {
        (Some(id), Some(status)) => Some((
            id,
            LockedAvatar {
                status: parse_column("avatars", "status", status, AvatarStatus::parse)?,
                has_model: recorded.avatar_has_model.unwrap_or(false),
            },
        )),
        _ => None,
    };
    // The avatar's new model and status, and `training.succeeded` announcing them: one
    // statement.
    let snapshot = EventSnapshot::Training {
        job: Box::new(job.clone()),
        model: Some(recorded.model),
    };
    sqlx::query(&format!(
        "WITH moved AS (UPDATE avatars SET current_model_id = $8, status = $9, updated_at = now()
                        WHERE id = $7)
         {INSERT_OUTBOX_EVENT}"
    ))
    .bind(Uuid::now_v7())
    .bind(job.tenant_id)
    .bind(EventType::TrainingSucceeded.as_str())
    .bind(Some(job.id))
    .bind(job.avatar_id)
    .bind(serde_json::to_value(&snapshot).map_err(|e| StoreError::Encode(e.to_string()))?)
    .bind(avatar.as_ref().map(|(id, _)| *id))
    .bind(match &snapshot {
        EventSnapshot::Training { model, .. } => model.as_ref().map(|m| m.id),
        _ => None,
    })
    .bind(avatar.map(|(_, avatar)| {
        avatar
            .status
            .after(AvatarChange::TrainingSucceeded)
            .as_str()
    }))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A model just recorded, with its avatar's row as locked for the status transition (no
/// avatar: `None`).
#[derive(sqlx::FromRow)]
struct RecordedModel {
    #[sqlx(flatten)]
    model: ModelRecord,
    avatar_status: Option<String>,
    avatar_has_model: Option<bool>,
}

impl Store {
    /// Records the model of a succeeded training and makes it the avatar's current model, in
    /// one transaction with clearing the job's custody flag. Safe to repeat: a training has at
    /// most one model. False when the lease was lost.
    pub async fn complete_training(
        &self,
        job_id: Uuid,
        fence: i64,
        model: &NewModel,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut changed = Vec::new();
        let completed =
            complete_custody_in(&mut tx, job_id, fence, Some(model.clone()), &mut changed).await?;
        if completed {
            tx.commit().await?;
            self.observer.committed(&changed);
        }
        Ok(completed)
    }

    /// The model a training produced, if it is in custody.
    pub async fn model_of_training(
        &self,
        training_id: Uuid,
    ) -> Result<Option<ModelRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {MODEL_COLUMNS} FROM models WHERE training_id = $1"
        ))
        .bind(training_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A model by id, for the submitter.
    pub async fn model_by_id(&self, id: Uuid) -> Result<Option<ModelRecord>, StoreError> {
        Ok(
            sqlx::query_as(&format!("SELECT {MODEL_COLUMNS} FROM models WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
