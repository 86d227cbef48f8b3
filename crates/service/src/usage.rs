//! Usage for billing: what a tenant's trainings and generations came to over a range of days.

use domain::usage::{UsageRange, UsageReport};
use domain::TenantId;

use crate::context::Service;
use crate::error::{InputLocation, ServiceError, Violation};

/// The tenant's usage from `from` to `to` (dates as `YYYY-MM-DD`, both included, UTC; see
/// [`UsageRange::parse`] for the defaults). A range longer than `USAGE_MAX_RANGE_DAYS` is
/// refused.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
pub async fn report(
    service: &Service,
    tenant_id: TenantId,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<UsageReport, ServiceError> {
    let today = chrono::Utc::now().date_naive();
    let range = UsageRange::parse(
        from,
        to,
        today,
        service.settings.tenants.usage_max_range_days,
    )
    .map_err(|violations| {
        ServiceError::invalid(
            violations
                .0
                .into_iter()
                .map(|v| Violation {
                    field: v.field,
                    location: InputLocation::Query,
                    code: v.code.to_string(),
                    message: v.message,
                })
                .collect(),
        )
    })?;
    let (start, end) = (range.start(), range.end());
    let trainings = service.store.training_usage(tenant_id, start, end).await?;
    let generations = service
        .store
        .generation_usage(tenant_id, start, end)
        .await?;
    Ok(UsageReport::build(range, &trainings, &generations))
}

/// Keeps what fal billed for `job`'s request, when the fetched result said
/// (`X-Fal-Billable-Units`), priced at the configured prices. Best effort: a failure to store
/// it is logged and leaves the job's actual cost unknown.
pub async fn record_billing(
    service: &Service,
    job: &store::JobRecord,
    billable_units: Option<f64>,
) {
    let Some(units) = billable_units else {
        return;
    };
    let prices = &service.settings.jobs;
    let cost = domain::usage::billed_cost_usd(
        &job.endpoint,
        units,
        &prices.prices,
        &prices.generation_prices,
    );
    if let Err(error) = service.store.record_billing(job.id, units, cost).await {
        tracing::warn!(%error, job_id = %job.id, "recording what fal billed");
    }
}
