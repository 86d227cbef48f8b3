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
             attempts AS (
                 SELECT j.generation_id, j.attempt, j.status, j.custody_needed,
                        j.result_fetch_needed, j.actual_cost_usd,
                        max(j.attempt) OVER (PARTITION BY j.generation_id, j.item_index)
                            AS last_attempt
                 FROM chosen c JOIN jobs j ON j.generation_id = c.id
             ),
             per_generation AS (
                 -- Over the latest attempt of each item (finished as domain::item_finished
                 -- says); the actual cost over every attempt.
                 SELECT generation_id,
                        bool_or(NOT (status = ANY($4) AND NOT custody_needed
                                     AND NOT result_fetch_needed))
                            FILTER (WHERE attempt = last_attempt) AS any_unfinished,
                        bool_and(status = 'pending')
                            FILTER (WHERE attempt = last_attempt) AS all_pending,
                        bool_or(status = 'succeeded')
                            FILTER (WHERE attempt = last_attempt) AS any_succeeded,
                        bool_and(status = 'succeeded')
                            FILTER (WHERE attempt = last_attempt) AS all_succeeded,
                        sum(actual_cost_usd) AS actual_cost_usd
                 FROM attempts
                 GROUP BY generation_id
             ),
             images AS (
                 SELECT gi.generation_id, count(*) AS images
                 FROM chosen c JOIN generation_images gi ON gi.generation_id = c.id
                 GROUP BY gi.generation_id
             )
             SELECT c.day, p.any_unfinished, p.all_pending, p.any_succeeded, p.all_succeeded,
                    count(*) AS count, coalesce(sum(i.images), 0)::bigint AS images,
                    sum(c.estimated_cost_usd) AS estimated_cost_usd,
                    sum(p.actual_cost_usd) AS actual_cost_usd
             FROM chosen c
                  JOIN per_generation p ON p.generation_id = c.id
                  LEFT JOIN images i ON i.generation_id = c.id
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
