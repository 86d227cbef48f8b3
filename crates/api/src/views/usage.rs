//! Usage reports as callers see them.

use chrono::NaiveDate;
use domain::usage::{GenerationUsage, TrainingUsage, Usage, UsageReport};
use domain::{GenerationStatus, JobStatus};
use serde::Serialize;
use utoipa::ToSchema;

/// Trainings by status.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingStatusCounts {
    pub pending: u64,
    pub uploading: u64,
    pub submitted: u64,
    pub in_progress: u64,
    pub submit_unknown: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub timed_out: u64,
}

/// Generations by status (a generation's status follows its items').
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationStatusCounts {
    pub pending: u64,
    pub in_progress: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub partially_succeeded: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingUsageView {
    /// Trainings created.
    pub total: u64,
    pub by_status: TrainingStatusCounts,
    /// The sum of the trainings' `estimated_cost_usd` (those without an estimate add
    /// nothing), rounded to 4 decimals.
    pub estimated_cost_usd: f64,
    /// What fal billed for them, where it reported it (billed units at the configured price);
    /// `null` when fal reported it for none.
    pub actual_cost_usd: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationUsageView {
    /// Generations created.
    pub total: u64,
    pub by_status: GenerationStatusCounts,
    /// Images made and kept for them.
    pub images: u64,
    /// The sum of the generations' `estimated_cost_usd`, rounded to 4 decimals.
    pub estimated_cost_usd: f64,
    /// What fal billed for their requests (resubmitted items included), where it reported it;
    /// `null` when fal reported it for none.
    pub actual_cost_usd: Option<f64>,
}

/// What trainings and generations created in a period came to.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageTotals {
    pub trainings: TrainingUsageView,
    pub generations: GenerationUsageView,
    /// Trainings' and generations' estimates together.
    pub estimated_cost_usd: f64,
    /// Trainings' and generations' actual costs together; `null` when fal reported none.
    pub actual_cost_usd: Option<f64>,
}

/// One UTC day of a usage report.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageDay {
    /// The UTC day; jobs count into the day they were created.
    pub date: NaiveDate,
    #[serde(flatten)]
    pub usage: UsageTotals,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    /// The first day of the report (UTC, included).
    pub from: NaiveDate,
    /// The last day of the report (UTC, included).
    pub to: NaiveDate,
    /// The whole range.
    pub totals: UsageTotals,
    /// Every day from `from` to `to`, oldest first; days without activity are zeros.
    pub days: Vec<UsageDay>,
}

fn trainings_view(usage: &TrainingUsage) -> TrainingUsageView {
    let n = |status| usage.by_status.count(status);
    TrainingUsageView {
        total: usage.by_status.total(),
        by_status: TrainingStatusCounts {
            pending: n(JobStatus::Pending),
            uploading: n(JobStatus::Uploading),
            submitted: n(JobStatus::Submitted),
            in_progress: n(JobStatus::InProgress),
            submit_unknown: n(JobStatus::SubmitUnknown),
            succeeded: n(JobStatus::Succeeded),
            failed: n(JobStatus::Failed),
            cancelled: n(JobStatus::Cancelled),
            timed_out: n(JobStatus::TimedOut),
        },
        estimated_cost_usd: usage.estimated_cost_usd,
        actual_cost_usd: usage.actual_cost_usd,
    }
}

fn generations_view(usage: &GenerationUsage) -> GenerationUsageView {
    let n = |status| usage.by_status.count(status);
    GenerationUsageView {
        total: usage.by_status.total(),
        by_status: GenerationStatusCounts {
            pending: n(GenerationStatus::Pending),
            in_progress: n(GenerationStatus::InProgress),
            succeeded: n(GenerationStatus::Succeeded),
            failed: n(GenerationStatus::Failed),
            partially_succeeded: n(GenerationStatus::PartiallySucceeded),
        },
        images: usage.images,
        estimated_cost_usd: usage.estimated_cost_usd,
        actual_cost_usd: usage.actual_cost_usd,
    }
}

fn totals_view(usage: &Usage) -> UsageTotals {
    UsageTotals {
        trainings: trainings_view(&usage.trainings),
        generations: generations_view(&usage.generations),
        estimated_cost_usd: usage.estimated_cost_usd(),
        actual_cost_usd: usage.actual_cost_usd(),
    }
}

/// The report as callers see it.
pub fn usage_view(report: UsageReport) -> UsageResponse {
    UsageResponse {
        from: report.range.first,
        to: report.range.last,
        totals: totals_view(&report.totals),
        days: report
            .days
            .iter()
            .map(|(date, usage)| UsageDay {
                date: *date,
                usage: totals_view(usage),
            })
            .collect(),
    }
}
