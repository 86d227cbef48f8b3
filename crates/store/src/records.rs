//! The rows the service reads, as typed records: their column lists, the decoding of their
//! enumerated columns into domain enums (an unknown value is a [`StoreError::CorruptRow`],
//! never a default), and the plain reads other modules build on.

use chrono::{DateTime, Utc};
use domain::delivery::{AttemptOutcome, DeliveryStatus};
use domain::{ItemState, JobKind, JobStatus, ModelType, TenantId};
use serde_json::Value;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgRow, PgTypeInfo, PgValueRef};
use sqlx::{PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::error::{CorruptValue, StoreError};

/// Reads a domain enum from its text column; `$name` names the column in errors.
macro_rules! enum_column {
    ($(#[$doc:meta])* $newtype:ident: $domain:ty, $table:literal . $column:literal) => {
        $(#[$doc])*
        pub(crate) struct $newtype($domain);

        impl sqlx::Type<Postgres> for $newtype {
            fn type_info() -> PgTypeInfo {
                <&str as sqlx::Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as sqlx::Type<Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, Postgres> for $newtype {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <&str as sqlx::Decode<Postgres>>::decode(value)?;
                <$domain>::parse(text).map(Self).ok_or_else(|| {
                    Box::new(CorruptValue {
                        table: $table,
                        column: $column,
                        value: text.to_owned(),
                    }) as BoxDynError
                })
            }
        }

        impl From<$newtype> for $domain {
            fn from(column: $newtype) -> Self {
                column.0
            }
        }
    };
}

enum_column!(JobKindColumn: JobKind, "jobs"."kind");
enum_column!(JobStatusColumn: JobStatus, "jobs"."status");
enum_column!(ModelTypeColumn: ModelType, "models"."model_type");
enum_column!(GenerationModelTypeColumn: ModelType, "generations"."model_type");
enum_column!(DeliveryStatusColumn: DeliveryStatus, "webhook_deliveries"."status");
enum_column!(AttemptOutcomeColumn: AttemptOutcome, "webhook_attempts"."outcome");

/// Parses a value read by hand (not through a record), or reports the row as corrupt.
pub(crate) fn parse_column<T>(
    table: &'static str,
    column: &'static str,
    value: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(value).ok_or_else(|| {
        CorruptValue {
            table,
            column,
            value: value.to_owned(),
        }
        .into()
    })
}

/// A job sent to fal: a training, or one attempt of a generation item.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub avatar_id: Option<Uuid>,
    #[sqlx(try_from = "JobKindColumn")]
    pub kind: JobKind,
    #[sqlx(try_from = "JobStatusColumn")]
    pub status: JobStatus,
    pub trainer: Option<String>,
    pub endpoint: String,
    pub preset: Option<String>,
    pub params: Value,
    pub trigger_phrase: Option<String>,
    pub input_blob_key: Option<String>,
    pub estimated_cost_usd: Option<f64>,
    pub fal_request_id: Option<String>,
    pub status_url: Option<String>,
    pub response_url: Option<String>,
    pub cancel_url: Option<String>,
    pub queue_position: Option<i32>,
    pub progress: Option<f64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub result: Option<Value>,
    pub result_fetch_needed: bool,
    pub custody_needed: bool,
    pub fence: i64,
    pub submit_started_at: Option<DateTime<Utc>>,
    pub next_check_at: Option<DateTime<Utc>>,
    pub check_failures: i32,
    pub deadline_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The generation an item belongs to (generation jobs only).
    pub generation_id: Option<Uuid>,
    /// The prompt's position in its generation.
    pub item_index: Option<i32>,
    /// 1, or 2 for a generation item resubmitted after fal could not fetch the LoRA.
    pub attempt: i32,
    /// The W3C `traceparent` of the request that created the job, when traces are exported.
    pub traceparent: Option<String>,
    /// How long fal is expected to run the job, in seconds.
    pub estimated_seconds: Option<f64>,
    /// Safety-net status lookups made since submission.
    pub status_checks: i32,
    /// Someone watches the job until then (its live progress is fetched).
    pub watched_until: Option<DateTime<Utc>>,
    /// When fal was last asked where the job stands.
    pub progress_checked_at: Option<DateTime<Utc>>,
    /// Set while the service owes fal a cancel: when it is next tried.
    pub cancel_due_at: Option<DateTime<Utc>>,
    /// Why the cancel is owed: `caller`, `deadline` or `avatar_deleted`.
    pub cancel_cause: Option<String>,
    /// Cancels sent to fal that failed (5xx, transport errors).
    pub cancel_attempts: i32,
    /// How the owed cancel ended: `requested` (fal answered 202), `already_completed`,
    /// `not_found`, `not_submitted` (nothing reached fal) or `unconfirmed` (attempts ran out).
    pub cancel_outcome: Option<String>,
}

impl JobRecord {
    pub fn status(&self) -> JobStatus {
        self.status
    }

    pub fn kind(&self) -> JobKind {
        self.kind
    }

    /// Where the job stands as a generation item.
    pub fn item_state(&self) -> ItemState {
        ItemState {
            status: self.status,
            custody_needed: self.custody_needed,
            result_fetch_needed: self.result_fetch_needed,
        }
    }
}

pub(crate) const JOB_COLUMNS: &str = "id, tenant_id, avatar_id, kind, status, trainer, endpoint, preset, params, \
    trigger_phrase, input_blob_key, estimated_cost_usd, fal_request_id, status_url, \
    response_url, cancel_url, queue_position, progress, error_code, error_message, result, \
    result_fetch_needed, custody_needed, fence, submit_started_at, next_check_at, check_failures, \
    deadline_at, cancel_requested_at, created_at, updated_at, submitted_at, started_at, finished_at, \
    generation_id, item_index, attempt, traceparent, \
    estimated_seconds, status_checks, watched_until, progress_checked_at, \
    cancel_due_at, cancel_cause, cancel_attempts, cancel_outcome";

/// Stored artifacts of a model, for generation.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct ModelRecord {
    pub id: Uuid,
    pub avatar_id: Option<Uuid>,
    pub training_id: Uuid,
    #[sqlx(try_from = "ModelTypeColumn")]
    pub model_type: ModelType,
    pub trigger_phrase: String,
    pub artifact_key: Option<String>,
    pub artifact_sha256: Option<String>,
    pub artifact_bytes: Option<i64>,
    pub config_key: Option<String>,
    pub fal_artifact_url: Option<String>,
    pub finetune_id: Option<String>,
}

pub(crate) const MODEL_COLUMNS: &str = "id, avatar_id, training_id, model_type, trigger_phrase, \
     artifact_key, artifact_sha256, artifact_bytes, config_key, fal_artifact_url, finetune_id";

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct GenerationRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub avatar_id: Option<Uuid>,
    pub model_id: Option<Uuid>,
    #[sqlx(try_from = "GenerationModelTypeColumn")]
    pub model_type: ModelType,
    pub endpoint: String,
    pub preset: String,
    pub num_images: i32,
    pub request: Value,
    pub estimated_cost_usd: Option<f64>,
    pub created_at: DateTime<Utc>,
}

pub(crate) const GENERATION_COLUMNS: &str =
    "id, tenant_id, avatar_id, model_id, model_type, endpoint, preset, \
    num_images, request, estimated_cost_usd, created_at";

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

/// One event's delivery to one endpoint, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    #[sqlx(try_from = "DeliveryStatusColumn")]
    pub status: DeliveryStatus,
    pub attempt_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AttemptRecord {
    pub delivery_id: Uuid,
    pub number: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    #[sqlx(try_from = "AttemptOutcomeColumn")]
    pub outcome: AttemptOutcome,
    pub status_code: Option<i32>,
    pub latency_ms: Option<i32>,
    pub error: Option<String>,
    pub response_snippet: Option<String>,
}

/// The rows of a page fetched with `LIMIT limit + 1`, and whether more follow.
pub(crate) fn split_page<T>(mut rows: Vec<T>, limit: u32) -> (Vec<T>, bool) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    (rows, more)
}

/// One of a tenant's rows: `sql` selects it `WHERE tenant_id = $1 AND id = $2`.
pub(crate) async fn tenant_row<T>(
    pool: &PgPool,
    sql: &str,
    tenant_id: TenantId,
    id: Uuid,
) -> Result<T, StoreError>
where
    T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    sqlx::query_as(sql)
        .bind(tenant_id.0)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)
}

/// Any job, by id.
pub(crate) async fn job_by_id(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<JobRecord>, StoreError> {
    Ok(
        sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// Any generation, by id.
pub(crate) async fn generation_by_id(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<GenerationRecord>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {GENERATION_COLUMNS} FROM generations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Every job of a generation (all attempts), by item then attempt.
pub(crate) async fn generation_jobs(
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

pub(crate) async fn generation_images(
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

/// The job event that records a job's creation (not a [`domain::JobEvent`]: nothing moves a
/// job into its first status).
const CREATED: &str = "created";

/// `insert_jobs` (an `INSERT INTO jobs ... RETURNING {JOB_COLUMNS}`) as one statement that also
/// records each inserted job's creation in its event log, with the cause bound at
/// `cause_param` (such as `$16`). Returns the inserted jobs.
pub(crate) fn inserting_jobs_with_created_events(insert_jobs: &str, cause_param: &str) -> String {
    format!(
        "WITH inserted AS ({insert_jobs}),
         created AS (
             INSERT INTO job_events (job_id, event, to_status, applied, cause)
             SELECT id, '{CREATED}', status, true, {cause_param}::text FROM inserted)
         SELECT * FROM inserted"
    )
}

/// Records a job's creation in its event log.
pub(crate) async fn record_created(
    conn: &mut PgConnection,
    job_id: Uuid,
    cause: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_events (job_id, event, to_status, applied, cause)
         VALUES ($1, $2, $3, true, $4)",
    )
    .bind(job_id)
    .bind(CREATED)
    .bind(JobStatus::Pending.as_str())
    .bind(cause)
    .execute(conn)
    .await?;
    Ok(())
}
