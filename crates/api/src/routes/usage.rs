//! `GET /usage`: what the calling tenant's trainings and generations came to, per UTC day.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::extract::AppQuery;
use crate::problem::{ApiError, Problem};
use crate::responses::Unauthorized;
use crate::state::AppState;
use crate::views::usage::{usage_view, UsageResponse};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// The first day, `YYYY-MM-DD` (UTC, included). Default: the day that makes the report 30
    /// days long (or `USAGE_MAX_RANGE_DAYS`, when shorter).
    #[param(value_type = Option<String>, format = Date)]
    pub from: Option<String>,
    /// The last day, `YYYY-MM-DD` (UTC, included). Default: today.
    #[param(value_type = Option<String>, format = Date)]
    pub to: Option<String>,
}

/// Get usage.
///
/// For billing: the calling tenant's trainings and generations created from `from` to `to`
/// (UTC days, both included), counted by status, with the images made and the estimated and
/// (where fal reported it) actual cost, in total and for every day of the range (days
/// without activity are zeros). A job counts into the day it was created, whatever became of
/// it since, and still counts after its avatar is deleted. Costs are US dollars rounded to 4
/// decimals. A range may span at most `USAGE_MAX_RANGE_DAYS` days (366 by default).
#[utoipa::path(
    get,
    path = "/usage",
    tag = "usage",
    operation_id = "get_usage",
    params(UsageQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The tenant's usage", body = UsageResponse),
        Unauthorized,
        (status = 422, description = "A date that is not `YYYY-MM-DD` (`invalid_date`), `from` after `to` (`after_to`), a range longer than allowed (`range_too_long`) or an unknown parameter; `errors` names the field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_usage(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(query): AppQuery<UsageQuery>,
) -> Result<Json<UsageResponse>, ApiError> {
    let report = service::usage::report(
        &state,
        caller.tenant_id,
        query.from.as_deref(),
        query.to.as_deref(),
    )
    .await?;
    Ok(Json(usage_view(report)))
}
