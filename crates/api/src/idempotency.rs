//! `Idempotency-Key` for the POSTs that cost money (trainings, generations).
//!
//! The key is claimed in its own committed row before the work, under a lease the request
//! renews while it runs, so a concurrent duplicate sees it in flight (409) for as long as the
//! first request may still run, and a key whose request died is free again a lease later. The
//! training or generation the request creates is bound to the key in the creating transaction:
//! from then on the key answers with that resource, whatever happens to the request. The answer
//! (2xx or a 4xx problem) is stored and replayed with `idempotent-replayed: true`; a 5xx or
//! quota refusal before anything was created releases the key so the caller can retry.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::{AvatarId, TenantId};
use serde_json::Value;
use sha2::{Digest, Sha256};
use store::{IdempotencyClaim, IdempotencyHold, IdempotentResource};

use crate::avatar_in_path::AvatarInPath;
use crate::problem::ApiError;
use crate::state::AppState;

/// A paid command on one avatar (`POST /avatars/{id}/train`, `POST /avatars/{id}/generations`)
/// as read, not parsed yet: who sent it and for which avatar (checked in that order, as
/// separate extractors would: 401, then 404), its scope, headers (content type,
/// `Idempotency-Key`) and body. Parsing is part of the work a key runs once, so a malformed
/// body answers the same way each time it is sent.
pub struct AvatarCommand {
    pub tenant: TenantId,
    pub avatar: AvatarId,
    /// The method and the route with the avatar's id, e.g. `POST /avatars/{id}/train`: part of
    /// the request's fingerprint, so one key cannot serve two routes or avatars.
    scope: String,
    headers: HeaderMap,
    body: Bytes,
}

impl FromRequest<AppState> for AvatarCommand {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let AvatarInPath { tenant, avatar } =
            AvatarInPath::from_request_parts(&mut parts, state).await?;
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(|matched| matched.as_str().replace("{id}", &avatar.0.to_string()))
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a command outside its route")))?;
        let scope = format!("{} {route}", parts.method);
        let headers = parts.headers.clone();
        let body = crate::extract::read_body(Request::from_parts(parts, body), state).await?;
        Ok(Self {
            tenant,
            avatar,
            scope,
            headers,
            body,
        })
    }
}

impl AvatarCommand {
    /// The request's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Runs the command at most once per (tenant, key): its scope and body make the request's
    /// fingerprint, so the same key with another request is a 422. The body must be declared
    /// JSON; it is parsed into `T` for `work`, which passes the hold to the use case, which
    /// binds what it creates to the key.
    pub async fn run<T, F, Fut>(&self, state: &AppState, work: F) -> Result<Response, ApiError>
    where
        T: serde::de::DeserializeOwned,
        F: FnOnce(T, Option<IdempotencyHold>) -> Fut,
        Fut: Future<Output = Result<Response, ApiError>>,
    {
        let (tenant, scope) = (self.tenant, &self.scope);
        let (headers, body) = (&self.headers, &self.body[..]);
        crate::extract::require_json(headers)?;
        let work = |hold| async { work(crate::extract::parse_json(body)?, hold).await };
        let Some(key) = idempotency_key(headers)? else {
            return work(None).await;
        };
        let mut hasher = Sha256::new();
        hasher.update(format!("{scope}\n").as_bytes());
        hasher.update(body);
        let hash = hex::encode(hasher.finalize());
        let tenant_id = tenant.0;
        let lease = state.settings.http.idempotency_lease;
        let hold = match state
            .store
            .claim_idempotency_key(tenant_id, &key, &hash, lease)
            .await?
        {
            IdempotencyClaim::Claimed(hold) => hold,
            IdempotencyClaim::InFlight => {
                return Err(ApiError::conflict(
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still being handled; retry shortly",
                ))
            }
            IdempotencyClaim::Mismatch => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_mismatch",
                    "this Idempotency-Key was used with a different request",
                ))
            }
            IdempotencyClaim::Done {
                status,
                body,
                headers,
            } => return Ok(replay(status, body, headers)),
            IdempotencyClaim::Committed(resource) => {
                // Its request created this and never answered: answer with it, and keep that.
                let response = committed(state, tenant, resource).await?;
                let response = remember(state, tenant_id, &key, None, response).await?;
                return Ok(mark_replayed(response));
            }
        };
        let renewing = tokio::spawn(renew(state.clone(), hold.clone(), lease));
        let _stop_renewing = AbortOnDrop(renewing);
        let outcome = work(Some(hold.clone())).await;
        let status = match &outcome {
            Ok(response) => response.status(),
            Err(error) => error.status(),
        };
        // A quota refusal is transient like a 5xx: the same key must be able to succeed later,
        // unless the request got as far as creating its resource.
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            match state.store.release_idempotency_key(&hold).await? {
                None => return outcome,
                Some(resource) => {
                    tracing::warn!(%status, "the request failed after creating its resource; answering with the resource");
                    let response = committed(state, tenant, resource).await?;
                    return remember(state, tenant_id, &key, Some(&hold), response).await;
                }
            }
        }
        // Keep the answer, success or refusal, to replay it byte for byte.
        let response = outcome.unwrap_or_else(IntoResponse::into_response);
        remember(state, tenant_id, &key, Some(&hold), response).await
    }
}

/// Keeps the key's claim alive while its request runs.
async fn renew(state: AppState, hold: IdempotencyHold, lease: std::time::Duration) {
    let mut every = tokio::time::interval(lease / 3);
    every.tick().await;
    loop {
        every.tick().await;
        match state.store.renew_idempotency_key(&hold, lease).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => tracing::warn!(%error, "renewing an Idempotency-Key"),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The resource a key's request created, as its request would have answered: 202 at its
/// Location.
async fn committed(
    state: &AppState,
    tenant: domain::TenantId,
    resource: IdempotentResource,
) -> Result<Response, ApiError> {
    match resource {
        IdempotentResource::Training(id) => {
            let training = service::trainings::get(state, tenant, id).await?;
            crate::views::trainings::accepted_training(training)
        }
        IdempotentResource::Generation(id) => {
            let generation = service::generations::get(state, tenant, id).await?;
            crate::responses::located(
                StatusCode::ACCEPTED,
                &format!("/generations/{id}"),
                crate::views::generations::generation_view(generation),
            )
        }
    }
}

/// Stores `response` as the key's answer and returns it.
async fn remember(
    state: &AppState,
    tenant_id: uuid::Uuid,
    key: &str,
    hold: Option<&IdempotencyHold>,
    response: Response,
) -> Result<Response, ApiError> {
    let status = response.status();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(ApiError::internal)?;
    let body_json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let header_text = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let headers_json = serde_json::json!({
        "location": header_text(header::LOCATION),
        "content-type": header_text(header::CONTENT_TYPE),
    });
    let response = Response::from_parts(parts, axum::body::Body::from(bytes));
    state
        .store
        .finish_idempotency_key(
            tenant_id,
            key,
            hold,
            status.as_u16(),
            &body_json,
            &headers_json,
        )
        .await?;
    Ok(response)
}

fn mark_replayed(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("").trim().to_string();
    if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(Some(key))
}

/// Rebuilds a stored answer, marked as a replay.
fn replay(status: u16, body: Value, headers: Value) -> Response {
    let mut response = Response::new(axum::body::Body::from(
        serde_json::to_vec(&body).unwrap_or_default(),
    ));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type = headers["content-type"]
        .as_str()
        .unwrap_or("application/json");
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    if let Some(location) = headers["location"]
        .as_str()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    mark_replayed(response)
}
