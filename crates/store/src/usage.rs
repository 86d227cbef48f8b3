//! Usage for billing: a tenant's trainings and generations over a range of creation times,
//! summed per UTC day in the database.

use chrono::{DateTime, NaiveDate, Utc};
use domain::usage::{GenerationTally, TrainingTally};
use domain::{ItemsSummary, JobStatus, TenantId};

use crate::error::StoreError;
use crate::records::JobStatusColumn;
use crate::Store;

#[derive(sqlx::FromRow)]
struct TrainingRow {
    day: NaiveDate,
    status: JobStatusColumn,
    count: i64,
    estimated_cost_usd: Option<f64>,
    actual_cost_usd: Option<f64>,
}

#[derive(sqlx::FromRow)]
struct GenerationRow {
    day: NaiveDate,
    any_unfinished: bool,
    all_pending: bool,
    any_succeeded: bool,
    all_succeeded: bool,
    count: i64,
    images: Option<i64>,
    estimated_cost_usd: Option<f64>,
    actual_cost_usd: Option<f64>,
}

impl Store {
    /// Records what fal billed for a job's request: its billed units and their cost (`None`
    /// when no unit price is known). Repeating it with the same values changes nothing.
    pub async fn record_billing(
        &self,
        job_id: uuid::Uuid,
        billable_units: f64,
        actual_cost_usd: Option<f64>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET fal_billable_units = $2, actual_cost_usd = $3 WHERE id = $1")
            .bind(job_id)
            .bind(billable_units)
            .bind(actual_cost_usd)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A tenant's trainings created in `[start, end)`, counted per UTC day and status. Jobs
    /// of deleted avatars count: the job rows stay as billing records.
    pub async fn training_usage(
        &self,
        tenant_id: TenantId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<TrainingTally>, StoreError> {
        let rows: Vec<TrainingRow> = sqlx::query_as(
            "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status, count(*) AS count,
                    sum(estimated_cost_usd) AS estimated_cost_usd,
                    sum(actual_cost_usd) AS actual_cost_usd
             FROM jobs
             WHERE tenant_id = $1 AND kind = 'training' AND created_at >= $2 AND created_at < $3
             GROUP BY 1, 2",
        )
        .bind(tenant_id.0)
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| TrainingTally {
                day: row.day,
                status: row.status.into(),
                count: row.count.unsigned_abs(),
                estimated_cost_usd: row.estimated_cost_usd.unwrap_or(0.0),
                actual_cost_usd: row.actual_cost_usd,
            })
            .collect())
    }

    /// A tenant's generations created in `[start, end)`, counted per UTC day and by what
    /// their status depends on (the latest attempt of each item, summed up as
    /// [`ItemsSummary`]), with the images kept for them and their costs. A generation's
    /// actual cost is that of all its jobs, resubmitted attempts included.
    pub async fn generation_usage(
        &self,
        tenant_id: TenantId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<GenerationTally>, StoreError> {
        let terminal: Vec<&str> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(JobStatus::as_str)
            .collect();
        let rows: Vec<GenerationRow> = sqlx::query_as(
            "WITH chosen AS (
                 SELECT id, (created_at AT TIME ZONE 'UTC')::date AS day, estimated_cost_usd
                 FROM generations
                 WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
             ),
             items AS (
                 -- The latest attempt of each item; finished as domain::item_finished says.
                 SELECT DISTINCT ON (j.generation_id, j.item_index) j.generation_id, j.status,
                        j.status = ANY($4) AND NOT j.custody_needed AND NOT j.result_fetch_needed
                            AS finished
                 FROM jobs j JOIN chosen c ON c.id = j.generation_id
                 ORDER BY j.generation_id, j.item_index, j.attempt DESC
             ),
             per_generation AS (
                 SELECT c.id, c.day, c.estimated_cost_usd,
                        bool_or(NOT i.finished) AS any_unfinished,
                        bool_and(i.status = 'pending') AS all_pending,
                        bool_or(i.status = 'succeeded') AS any_succeeded,
                        bool_and(i.status = 'succeeded') AS all_succeeded
                 FROM chosen c JOIN items i ON i.generation_id = c.id
                 GROUP BY c.id, c.day, c.estimated_cost_usd
             )
             SELECT p.day, p.any_unfinished, p.all_pending, p.any_succeeded, p.all_succeeded,
                    count(*) AS count,
                    sum((SELECT count(*) FROM generation_images gi WHERE gi.generation_id = p.id))::bigint
                        AS images,
                    sum(p.estimated_cost_usd) AS estimated_cost_usd,
                    sum((SELECT sum(j.actual_cost_usd) FROM jobs j WHERE j.generation_id = p.id))
                        AS actual_cost_usd
             FROM per_generation p
             GROUP BY 1, 2, 3, 4, 5",
        )
        .bind(tenant_id.0)
        .bind(start)
        .bind(end)
        .bind(&terminal)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| GenerationTally {
                day: row.day,
                items: ItemsSummary {
                    any_unfinished: row.any_unfinished,
                    all_pending: row.all_pending,
                    any_succeeded: row.any_succeeded,
                    all_succeeded: row.all_succeeded,
                },
                count: row.count.unsigned_abs(),
                images: row.images.unwrap_or(0).unsigned_abs(),
                estimated_cost_usd: row.estimated_cost_usd.unwrap_or(0.0),
                actual_cost_usd: row.actual_cost_usd,
            })
            .collect())
    }
}
