//! Trained models: created when a training's artifacts are in our custody.

use domain::ModelType;
use uuid::Uuid;

use crate::error::StoreError;
use crate::jobs::complete_custody_in;
use crate::records::{ModelRecord, MODEL_COLUMNS};
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
        let mut tx = self.begin().await?;
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
