//! Generations: a request row plus one job of kind `generation` per prompt, and the images kept
//! for them.

use chrono::{DateTime, Utc};
use domain::{
    item_finished, settled_event, AvatarId, EventType, ItemState, JobKind, JobStatus, ModelType,
    TenantId,
};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::avatars::avatar_page;
use crate::error::StoreError;
use crate::events::{insert_generation_event, insert_generation_event_of};
use crate::jobs::complete_custody_in;
use crate::records::{
    generation_by_id, generation_images, generation_jobs, inserting_jobs_with_created_events,
    parse_column, record_created, tenant_row, GenerationImage, GenerationRecord, JobRecord,
    GENERATION_COLUMNS, JOB_COLUMNS,
};
use crate::Store;

/// The channel on which a finished generation item is announced (payload: generation id).
pub const GENERATION_CHANNEL: &str = "avatars_generation_items";

/// A generation to create.
#[derive(Debug, Clone)]
pub struct NewGeneration {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub avatar_id: AvatarId,
    pub model_id: Uuid,
    pub model_type: ModelType,
    pub endpoint: String,
    pub preset: String,
    pub num_images: u32,
    pub request: Value,
    pub estimated_cost_usd: Option<f64>,
    /// Each item's budget until it is submitted; from submission it gets one of its own.
    pub deadline_at: DateTime<Utc>,
    /// How long fal is expected to take for one item.
    pub estimated_seconds: f64,
    pub items: Vec<NewGenerationItem>,
    /// The W3C `traceparent` of the creating request, kept with each item's job.
    pub traceparent: Option<String>,
}

/// One prompt of a generation: its job.
#[derive(Debug, Clone)]
pub struct NewGenerationItem {
    pub job_id: Uuid,
    /// The fal input, except the LoRA's URL, which is filled in at submit.
    pub params: Value,
    pub trigger_phrase: String,
    pub estimated_cost_usd: Option<f64>,
}

impl Store {
    /// Creates the generation and one pending job per prompt, in one transaction, and returns
    /// them as stored (the jobs by item).
    pub async fn insert_generation(
        &self,
        new: &NewGeneration,
        max_active: u32,
        idempotency: Option<&crate::IdempotencyHold>,
    ) -> Result<(GenerationRecord, Vec<JobRecord>), StoreError> {
        let mut tx = self.begin().await?;
        crate::tenants::check_quota(
            &mut tx,
            new.tenant_id,
            crate::Quota::ActiveGenerations,
            max_active,
        )
        .await?;
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
        .bind(new.model_type.as_str())
        .bind(&new.endpoint)
        .bind(&new.preset)
        .bind(new.num_images as i32)
        .bind(&new.request)
        .bind(new.estimated_cost_usd)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        let jobs = insert_items(&mut tx, new).await?;
        insert_generation_event_of(
            &mut tx,
            EventType::GenerationQueued,
            generation.clone(),
            jobs.clone(),
            Vec::new(),
        )
        .await?;
        crate::idempotency::bind_resource_in(
            &mut tx,
            idempotency,
            crate::IdempotentResource::Generation(new.id),
        )
        .await?;
        tx.commit().await?;
        Ok((generation, jobs))
    }

    /// A tenant's generation.
    pub async fn get_generation(
        &self,
        tenant_id: TenantId,
        id: Uuid,
    ) -> Result<GenerationRecord, StoreError> {
        tenant_row(
            &self.pool,
            &format!(
                "SELECT {GENERATION_COLUMNS} FROM generations WHERE tenant_id = $1 AND id = $2"
            ),
            tenant_id,
            id,
        )
        .await
    }

    /// Any generation, for workers.
    pub async fn generation_by_id(&self, id: Uuid) -> Result<Option<GenerationRecord>, StoreError> {
        generation_by_id(&self.pool, id).await
    }

    /// A page of an avatar's generations, newest first. `None` when the avatar does not exist.
    pub async fn list_generations(
        &self,
        tenant_id: TenantId,
        avatar_id: AvatarId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Option<(Vec<GenerationRecord>, bool)>, StoreError> {
        avatar_page(
            &self.pool,
            &format!("{GENERATION_COLUMNS} FROM generations"),
            "",
            tenant_id,
            avatar_id,
            after,
            limit,
        )
        .await
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

    /// Records a finishing item's images and completes it, in one transaction. Safe to
    /// repeat. False when the lease was lost or the item is no longer finishing.
    pub async fn complete_generation_item(
        &self,
        job_id: Uuid,
        fence: i64,
        images: &[GenerationImage],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let generation_id: Option<Uuid> =
            sqlx::query_scalar("SELECT generation_id FROM jobs WHERE id = $1 AND fence = $2")
                .bind(job_id)
                .bind(fence)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
        let Some(generation_id) = generation_id else {
            return Ok(false);
        };
        // The images first: finishing the item may settle its generation, whose event lists
        // them.
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
        let mut changed = Vec::new();
        let completed = complete_custody_in(&mut tx, job_id, fence, None, &mut changed).await?;
        if completed {
            tx.commit().await?;
            self.observer.committed(&changed);
        }
        Ok(completed)
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
    ) -> Result<Option<Uuid>, StoreError> {
        let mut tx = self.begin().await?;
        let cleared = sqlx::query(
            "UPDATE jobs SET custody_needed = false, lease_owner = NULL, lease_until = NULL, updated_at = now()
             WHERE id = $1 AND fence = $2 AND status = $3 AND custody_needed",
        )
        .bind(job_id)
        .bind(fence)
        .bind(JobStatus::Failed.as_str())
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
                 trigger_phrase, estimated_cost_usd, deadline_at, generation_id,
                 item_index, attempt, traceparent, estimated_seconds)
             SELECT $2, tenant_id, avatar_id, kind, $3, endpoint, preset, params, trigger_phrase,
                 estimated_cost_usd, now() + (deadline_at - created_at), generation_id,
                 item_index, attempt + 1, traceparent, estimated_seconds
             FROM jobs WHERE id = $1
             ON CONFLICT (generation_id, item_index, attempt) WHERE generation_id IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(job_id)
        .bind(next)
        .bind(JobStatus::Pending.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = inserted {
            record_created(&mut tx, id, "resubmitted with a re-uploaded LoRA").await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Waits for notifications of finished generation items from any replica.
    pub async fn listen_generations(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(GENERATION_CHANNEL).await?;
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
        let mut tx = self.begin().await?;
        let Some(job) = clear_item_flags(&mut tx, job_id, fence, None).await? else {
            return Ok(false);
        };
        announce_if_finished(&mut tx, &job).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Clears a leased item's custody and fetch flags (and its lease), when the job is `status`
/// (any, with `None`). `None` when the lease was lost.
async fn clear_item_flags(
    conn: &mut PgConnection,
    job_id: Uuid,
    fence: i64,
    status: Option<JobStatus>,
) -> Result<Option<JobRecord>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "UPDATE jobs SET custody_needed = false, result_fetch_needed = false, lease_owner = NULL,
             lease_until = NULL, updated_at = now()
         WHERE id = $1 AND fence = $2 AND ($3::text IS NULL OR status = $3)
         RETURNING {JOB_COLUMNS}"
    ))
    .bind(job_id)
    .bind(fence)
    .bind(status.map(JobStatus::as_str))
    .fetch_optional(conn)
    .await?)
}

/// One pending job per item of `new`, each with its `created` job event: one statement.
/// Returns the jobs by item.
async fn insert_items(
    conn: &mut PgConnection,
    new: &NewGeneration,
) -> Result<Vec<JobRecord>, StoreError> {
    let ids: Vec<Uuid> = new.items.iter().map(|item| item.job_id).collect();
    let params: Vec<&Value> = new.items.iter().map(|item| &item.params).collect();
    let triggers: Vec<&str> = new
        .items
        .iter()
        .map(|item| item.trigger_phrase.as_str())
        .collect();
    let costs: Vec<Option<f64>> = new
        .items
        .iter()
        .map(|item| item.estimated_cost_usd)
        .collect();
    let indexes: Vec<i32> = (0..new.items.len())
        .map(|index| i32::try_from(index).unwrap_or(i32::MAX))
        .collect();
    let mut jobs: Vec<JobRecord> = sqlx::query_as(&inserting_jobs_with_created_events(
        &format!(
            "INSERT INTO jobs (id, tenant_id, avatar_id, kind, status, endpoint, preset, params,
                 trigger_phrase, estimated_cost_usd, deadline_at, generation_id, item_index,
                 traceparent, estimated_seconds)
             SELECT t.id, $6, $7, $8, $9, $10, $11, t.params, t.trigger_phrase, t.cost, $12, $13,
                    t.item_index, $14, $15
               FROM unnest($1::uuid[], $2::jsonb[], $3::text[], $4::float8[], $5::int4[])
                    AS t(id, params, trigger_phrase, cost, item_index)
             RETURNING {JOB_COLUMNS}"
        ),
        "$16",
    ))
    .bind(&ids)
    .bind(&params)
    .bind(&triggers)
    .bind(&costs)
    .bind(&indexes)
    .bind(new.tenant_id.0)
    .bind(new.avatar_id.0)
    .bind(JobKind::Generation.as_str())
    .bind(JobStatus::Pending.as_str())
    .bind(&new.endpoint)
    .bind(&new.preset)
    .bind(new.deadline_at)
    .bind(new.id)
    .bind(&new.traceparent)
    .bind(new.estimated_seconds)
    .bind("generation requested")
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::from_write)?;
    jobs.sort_by_key(|job| (job.item_index, job.attempt));
    Ok(jobs)
}

/// When `job` (as its transaction left it) is a generation item the domain calls finished:
/// wakes callers waiting on its generation, in this replica or another, and settles the
/// generation.
pub(crate) async fn announce_if_finished(
    conn: &mut PgConnection,
    job: &JobRecord,
) -> Result<(), StoreError> {
    let Some(generation_id) = job.generation_id else {
        return Ok(());
    };
    if !item_finished(job.item_state()) {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(GENERATION_CHANNEL)
        .bind(generation_id.to_string())
        .execute(&mut *conn)
        .await?;
    settle_generation(conn, generation_id).await
}

/// Announces a generation whose every item is finished, once, with the event the domain
/// decides. Called by every transaction that finishes an item: the generation row's lock
/// orders them, so the last one sees all the others.
async fn settle_generation(conn: &mut PgConnection, generation_id: Uuid) -> Result<(), StoreError> {
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
    let latest: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT DISTINCT ON (item_index) status, custody_needed, result_fetch_needed
         FROM jobs WHERE generation_id = $1 ORDER BY item_index, attempt DESC",
    )
    .bind(generation_id)
    .fetch_all(&mut *conn)
    .await?;
    let items = latest
        .into_iter()
        .map(|(status, custody_needed, result_fetch_needed)| {
            Ok(ItemState {
                status: parse_column("jobs", "status", &status, JobStatus::parse)?,
                custody_needed,
                result_fetch_needed,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let Some(event_type) = settled_event(&items) else {
        return Ok(());
    };
    sqlx::query("UPDATE generations SET settled_at = now() WHERE id = $1")
        .bind(generation_id)
        .execute(&mut *conn)
        .await?;
    insert_generation_event(conn, generation_id, event_type).await
}
