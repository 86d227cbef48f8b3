//! Generations: a request row plus one job of kind `generation` per prompt, and the images kept
//! for them.

use chrono::{DateTime, Utc};
use domain::{AvatarId, TenantId};
use serde_json::Value;
use uuid::Uuid;

use crate::events::{insert_event, EventSnapshot};
use crate::jobs::{notify_generation, JOB_COLUMNS};
use crate::{JobRecord, Store, StoreError};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct GenerationRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub avatar_id: Option<Uuid>,
    pub model_id: Option<Uuid>,
    pub model_type: String,
    pub endpoint: String,
    pub preset: String,
    pub num_images: i32,
    pub request: Value,
    pub estimated_cost_usd: Option<f64>,
    pub created_at: DateTime<Utc>,
}

const GENERATION_COLUMNS: &str =
    "id, tenant_id, avatar_id, model_id, model_type, endpoint, preset, \
    num_images, request, estimated_cost_usd, created_at";

/// A generation to create.
#[derive(Debug, Clone)]
pub struct NewGeneration {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub avatar_id: AvatarId,
    pub model_id: Uuid,
    pub model_type: String,
    pub endpoint: String,
    pub preset: String,
    pub num_images: u32,
    pub request: Value,
    pub estimated_cost_usd: Option<f64>,
    pub deadline_at: DateTime<Utc>,
    pub items: Vec<NewGenerationItem>,
}

/// One prompt of a generation: its job.
#[derive(Debug, Clone)]
pub struct NewGenerationItem {
    pub job_id: Uuid,
    /// The fal input, except the LoRA's URL, which is filled in at submit.
    pub params: Value,
    pub trigger_phrase: String,
    pub estimated_cost_usd: Option<f64>,
    pub webhook_token: String,
}

/// An image copied into our storage.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct GenerationImage {
    pub generation_id: Uuid,
    pub job_id: Uuid,
    pub item_index: i32,
    pub image_index: i32,
    pub blob_key: String,
    pub content_type: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub bytes: i64,
    pub seed: Option<String>,
    pub nsfw: Option<bool>,
}

impl Store {
    /// Creates the generation and one pending job per prompt, in one transaction.
    pub async fn insert_generation(
        &self,
        new: &NewGeneration,
    ) -> Result<GenerationRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        let generation: GenerationRecord = sqlx::query_as(&format!(
            "INSERT INTO generations (id, tenant_id, avatar_id, model_id, model_type, endpoint, preset,
                 num_images, request, estimated_cost_usd)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             RETURNING {GENERATION_COLUMNS}"
        ))
        .bind(new.id)
        .bind(new.tenant_id.0)
        .bind(new.avatar_id.0)
        .bind(new.model_id)
        .bind(&new.model_type)
        .bind(&new.endpoint)
        .bind(&new.preset)
        .bind(new.num_images as i32)
        .bind(&new.request)
        .bind(new.estimated_cost_usd)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        for (index, item) in new.items.iter().enumerate() {
            sqlx::query(
                "INSERT INTO jobs (id, tenant_id, avatar_id, kind, status, endpoint, preset, params,
                     trigger_phrase, estimated_cost_usd, webhook_token, deadline_at, generation_id, item_index)
                 VALUES ($1, $2, $3, 'generation', 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(item.job_id)
            .bind(new.tenant_id.0)
            .bind(new.avatar_id.0)
            .bind(&new.endpoint)
            .bind(&new.preset)
            .bind(&item.params)
            .bind(&item.trigger_phrase)
            .bind(item.estimated_cost_usd)
            .bind(&item.webhook_token)
            .bind(new.deadline_at)
            .bind(new.id)
            .bind(index as i32)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_write)?;
            sqlx::query(
                "INSERT INTO job_events (job_id, event, to_status, applied, cause)
                 VALUES ($1, 'created', 'pending', true, 'generation requested')",
            )
            .bind(item.job_id)
            .execute(&mut *tx)
            .await?;
        }
        insert_generation_event(&mut tx, new.id, "generation.queued").await?;
        tx.commit().await?;
        Ok(generation)
    }

    /// A tenant's generation.
    pub async fn get_generation(
        &self,
        tenant_id: TenantId,
        id: Uuid,
    ) -> Result<GenerationRecord, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {GENERATION_COLUMNS} FROM generations WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant_id.0)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// Any generation, for workers.
    pub async fn generation_by_id(&self, id: Uuid) -> Result<Option<GenerationRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {GENERATION_COLUMNS} FROM generations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A page of an avatar's generations, newest first. `None` when the avatar does not exist.
    pub async fn list_generations(
        &self,
        tenant_id: TenantId,
        avatar_id: AvatarId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Option<(Vec<GenerationRecord>, bool)>, StoreError> {
        if !crate::avatars::avatar_exists(&self.pool, tenant_id, avatar_id).await? {
            return Ok(None);
        }
        let mut rows: Vec<GenerationRecord> = sqlx::query_as(&format!(
            "SELECT {GENERATION_COLUMNS} FROM generations
             WHERE tenant_id = $1 AND avatar_id = $2 AND ($3::uuid IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4"
        ))
        .bind(tenant_id.0)
        .bind(avatar_id.0)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Ok(Some((rows, more)))
    }

    /// Every job of a generation (all attempts), by item then attempt.
    pub async fn generation_jobs(&self, generation_id: Uuid) -> Result<Vec<JobRecord>, StoreError> {
        generation_jobs(&self.pool, generation_id).await
    }

    pub async fn generation_images(
        &self,
        generation_id: Uuid,
    ) -> Result<Vec<GenerationImage>, StoreError> {
        generation_images(&self.pool, generation_id).await
    }

    /// Records a succeeded item's images and clears its custody flag, in one transaction.
    /// Safe to repeat. False when the lease was lost.
    pub async fn complete_generation_item(
        &self,
        job_id: Uuid,
        fence: i64,
        images: &[GenerationImage],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let job: Option<(Uuid, Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
            "UPDATE jobs SET custody_needed = false, result_fetch_needed = false, lease_owner = NULL,
                 lease_until = NULL, updated_at = now()
             WHERE id = $1 AND fence = $2 AND status = 'succeeded'
             RETURNING tenant_id, avatar_id, generation_id",
        )
        .bind(job_id)
        .bind(fence)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((_, _, Some(generation_id))) = job else {
            return Ok(false);
        };
        for image in images {
            sqlx::query(
                "INSERT INTO generation_images (generation_id, job_id, item_index, image_index, blob_key,
                     content_type, width, height, bytes, seed, nsfw)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (generation_id, item_index, image_index) DO NOTHING",
            )
            .bind(generation_id)
            .bind(job_id)
            .bind(image.item_index)
            .bind(image.image_index)
            .bind(&image.blob_key)
            .bind(&image.content_type)
            .bind(image.width)
            .bind(image.height)
            .bind(image.bytes)
            .bind(&image.seed)
            .bind(image.nsfw)
            .execute(&mut *tx)
            .await?;
        }
        notify_generation(&mut tx, generation_id).await?;
        settle_generation(&mut tx, generation_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Resubmits a LoRA item whose request certainly failed because fal could not fetch the
    /// LoRA: remembers the re-uploaded LoRA's URL on the model, clears the failed job's flag and
    /// creates the next attempt as a pending job, in one transaction. The unique index on
    /// (generation, item, attempt) makes a repeat a no-op. False when the lease was lost.
    pub async fn resubmit_generation_item(
        &self,
        job_id: Uuid,
        fence: i64,
        model_id: Uuid,
        lora_url: &str,
        webhook_token: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let cleared = sqlx::query(
            "UPDATE jobs SET custody_needed = false, lease_owner = NULL, lease_until = NULL, updated_at = now()
             WHERE id = $1 AND fence = $2 AND status = 'failed' AND custody_needed",
        )
        .bind(job_id)
        .bind(fence)
        .execute(&mut *tx)
        .await?;
        if cleared.rows_affected() != 1 {
            return Ok(None);
        }
        sqlx::query("UPDATE models SET fal_artifact_url = $2 WHERE id = $1")
            .bind(model_id)
            .bind(lora_url)
            .execute(&mut *tx)
            .await?;
        let next = Uuid::now_v7();
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO jobs (id, tenant_id, avatar_id, kind, status, endpoint, preset, params,
                 trigger_phrase, estimated_cost_usd, webhook_token, deadline_at, generation_id,
                 item_index, attempt)
             SELECT $2, tenant_id, avatar_id, kind, 'pending', endpoint, preset, params, trigger_phrase,
                 estimated_cost_usd, $3, now() + (deadline_at - created_at), generation_id,
                 item_index, attempt + 1
             FROM jobs WHERE id = $1
             ON CONFLICT (generation_id, item_index, attempt) WHERE generation_id IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(job_id)
        .bind(next)
        .bind(webhook_token)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = inserted {
            sqlx::query(
                "INSERT INTO job_events (job_id, event, to_status, applied, cause)
                 VALUES ($1, 'created', 'pending', true, 'resubmitted with a re-uploaded LoRA')",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// A model by id, for the submitter.
    pub async fn model_by_id(&self, id: Uuid) -> Result<Option<crate::ModelRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM models WHERE id = $1",
            crate::models::MODEL_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Waits for notifications of finished generation items from any replica.
    pub async fn listen_generations(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(crate::jobs::GENERATION_CHANNEL).await?;
        Ok(listener)
    }
}

impl Store {
    /// Closes a generation item that cannot be completed further (its result is unusable, or
    /// its model is gone): clears its flags and announces it. False when the lease was lost.
    pub async fn finish_generation_item(
        &self,
        job_id: Uuid,
        fence: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let generation: Option<Option<Uuid>> = sqlx::query_scalar(
            "UPDATE jobs SET custody_needed = false, result_fetch_needed = false, lease_owner = NULL,
                 lease_until = NULL, updated_at = now()
             WHERE id = $1 AND fence = $2
             RETURNING generation_id",
        )
        .bind(job_id)
        .bind(fence)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(generation) = generation else {
            return Ok(false);
        };
        if let Some(generation) = generation {
            notify_generation(&mut tx, generation).await?;
            settle_generation(&mut tx, generation).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

async fn generation_jobs(
    db: impl sqlx::PgExecutor<'_>,
    generation_id: Uuid,
) -> Result<Vec<JobRecord>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE generation_id = $1 ORDER BY item_index, attempt"
    ))
    .bind(generation_id)
    .fetch_all(db)
    .await?)
}

async fn generation_images(
    db: impl sqlx::PgExecutor<'_>,
    generation_id: Uuid,
) -> Result<Vec<GenerationImage>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT generation_id, job_id, item_index, image_index, blob_key, content_type, width,
             height, bytes, seed, nsfw
         FROM generation_images WHERE generation_id = $1 ORDER BY item_index, image_index",
    )
    .bind(generation_id)
    .fetch_all(db)
    .await?)
}

/// Writes a `generation.*` event with the generation as the transaction sees it.
async fn insert_generation_event(
    conn: &mut sqlx::PgConnection,
    generation_id: Uuid,
    event_type: &str,
) -> Result<(), StoreError> {
    let generation: GenerationRecord = sqlx::query_as(&format!(
        "SELECT {GENERATION_COLUMNS} FROM generations WHERE id = $1"
    ))
    .bind(generation_id)
    .fetch_one(&mut *conn)
    .await?;
    let jobs = generation_jobs(&mut *conn, generation_id).await?;
    let images = generation_images(&mut *conn, generation_id).await?;
    insert_event(
        conn,
        generation.tenant_id,
        event_type,
        Some(generation.id),
        generation.avatar_id,
        &EventSnapshot::Generation {
            generation,
            jobs,
            images,
        },
    )
    .await
}

/// Announces a generation whose every item is finished (`generation.succeeded` when any image
/// was made, `generation.failed` otherwise), once. Called by every transaction that finishes
/// an item: the generation row's lock orders them, so the last one sees all the others.
pub(crate) async fn settle_generation(
    conn: &mut sqlx::PgConnection,
    generation_id: Uuid,
) -> Result<(), StoreError> {
    let unsettled: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM generations WHERE id = $1 AND settled_at IS NULL FOR UPDATE",
    )
    .bind(generation_id)
    .fetch_optional(&mut *conn)
    .await?;
    if unsettled.is_none() {
        return Ok(());
    }
    // The latest attempt of each item decides; a superseded attempt is history.
    let (open, succeeded): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')
                                    OR custody_needed OR result_fetch_needed),
                count(*) FILTER (WHERE status = 'succeeded')
         FROM (SELECT DISTINCT ON (item_index) status, custody_needed, result_fetch_needed
               FROM jobs WHERE generation_id = $1 ORDER BY item_index, attempt DESC) latest",
    )
    .bind(generation_id)
    .fetch_one(&mut *conn)
    .await?;
    if open > 0 {
        return Ok(());
    }
    sqlx::query("UPDATE generations SET settled_at = now() WHERE id = $1")
        .bind(generation_id)
        .execute(&mut *conn)
        .await?;
    let event_type = if succeeded > 0 {
        "generation.succeeded"
    } else {
        "generation.failed"
    };
    insert_generation_event(conn, generation_id, event_type).await
}
