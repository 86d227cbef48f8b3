//! Trained models: created when a training's artifacts are in our custody.

use domain::ModelType;
use uuid::Uuid;

use crate::{Store, StoreError};

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

pub(crate) const MODEL_COLUMNS: &str = "id, avatar_id, training_id, model_type, trigger_phrase, \
     artifact_key, artifact_sha256, artifact_bytes, config_key, fal_artifact_url, finetune_id";

/// Records the model of the succeeded training `job`, makes it the avatar's current model and
/// announces `training.succeeded` with it, inside the caller's transaction. A training has at
/// most one model: a repeat changes nothing.
pub(crate) async fn record_model_in(
    conn: &mut sqlx::PgConnection,
    job: &crate::JobRecord,
    model: &NewModel,
) -> Result<(), StoreError> {
    let recorded: Option<ModelRecord> = sqlx::query_as(&format!(
        "INSERT INTO models (id, tenant_id, avatar_id, training_id, model_type, trigger_phrase,
             artifact_key, artifact_sha256, artifact_bytes, config_key, fal_artifact_url, finetune_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (training_id) DO NOTHING
         RETURNING {MODEL_COLUMNS}"
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
    sqlx::query(
        "UPDATE avatars SET current_model_id = $2, status = 'trained', updated_at = now() WHERE id = $1",
    )
    .bind(job.avatar_id)
    .bind(recorded.id)
    .execute(&mut *conn)
    .await?;
    crate::jobs::insert_training_event(conn, job, "training.succeeded", Some(recorded)).await
}

/// Stored artifacts of a model, for generation.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct ModelRecord {
    pub id: Uuid,
    pub avatar_id: Option<Uuid>,
    pub training_id: Uuid,
    pub model_type: String,
    pub trigger_phrase: String,
    pub artifact_key: Option<String>,
    pub artifact_sha256: Option<String>,
    pub artifact_bytes: Option<i64>,
    pub config_key: Option<String>,
    pub fal_artifact_url: Option<String>,
    pub finetune_id: Option<String>,
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
        let job: Option<crate::JobRecord> = sqlx::query_as(&format!(
            "UPDATE jobs SET custody_needed = false, result_fetch_needed = false, lease_owner = NULL,
                 lease_until = NULL, updated_at = now()
             WHERE id = $1 AND fence = $2 AND status = 'succeeded'
             RETURNING {}",
            crate::jobs::JOB_COLUMNS
        ))
        .bind(job_id)
        .bind(fence)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = job else {
            return Ok(false);
        };
        record_model_in(&mut tx, &job, model).await?;
        tx.commit().await?;
        Ok(true)
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
}
