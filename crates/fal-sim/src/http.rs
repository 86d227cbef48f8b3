//! What every route shares: JSON answers, connection control, and who is calling.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use crate::accounts::{
    Account, KeyKind, BILLING_LOCK_DETAIL, MALFORMED_KEY_DETAIL, UNKNOWN_KEY_DETAIL,
};
use crate::state::Sim;

/// Lets a handler close the connection it arrived on.
#[derive(Clone)]
pub(crate) struct ConnectionControl(pub CancellationToken);

pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// fal's error answer `{"detail": detail}`: a message, or a list of pydantic-style issues.
pub(crate) fn detail_response(
    status: StatusCode,
    detail: impl Into<serde_json::Value>,
) -> Response {
    json_response(status, serde_json::json!({ "detail": detail.into() }))
}

/// Why a call was refused for its key.
pub(crate) enum AuthError {
    /// 401: the key is missing, malformed or unknown.
    Unauthorized(&'static str),
    /// 403: the account is billing-locked.
    BillingLocked,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match self {
            AuthError::Unauthorized(detail) => detail_response(StatusCode::UNAUTHORIZED, detail),
            AuthError::BillingLocked => detail_response(StatusCode::FORBIDDEN, BILLING_LOCK_DETAIL),
        }
    }
}

/// Resolves `Authorization: Key <id>:<secret>` to an account.
pub(crate) fn authenticate(sim: &Sim, headers: &HeaderMap) -> Result<Account, AuthError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Unauthorized(MALFORMED_KEY_DETAIL))?;
    let key = value
        .strip_prefix("Key ")
        .ok_or(AuthError::Unauthorized(MALFORMED_KEY_DETAIL))?
        .trim();
    if !key.contains(':') {
        return Err(AuthError::Unauthorized(MALFORMED_KEY_DETAIL));
    }
    sim.lock()
        .accounts
        .get(key)
        .cloned()
        .ok_or(AuthError::Unauthorized(UNKNOWN_KEY_DETAIL))
}

/// The caller's account for a call that would cost money (submit, upload): 401 as
/// [`authenticate`] says, 403 for billing-locked accounts. fal fails these "before enqueue";
/// whether reads also fail is [UNVERIFIED], so reads only [`authenticate`].
pub(crate) fn paying_account(sim: &Sim, headers: &HeaderMap) -> Result<Account, AuthError> {
    let account = authenticate(sim, headers)?;
    if account.kind == KeyKind::BillingLocked {
        return Err(AuthError::BillingLocked);
    }
    Ok(account)
}
