//! The `/_sim/` control API and the operations behind it (also called from Rust through
//! [`crate::FalSim`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::{Account, KeyKind};
use crate::faults::{HeldWebhookOrder, RequestFaults, SubmitFault};
use crate::http::{detail_response, json_response};
use crate::record::{ReceivedRequest, RequestReport, WebhookOutcome};
use crate::state::{SharedSim, Sim};
use crate::{webhook, worker};

pub(crate) fn router() -> Router<SharedSim> {
    Router::new()
        .route("/info", get(info))
        .route("/keys", post(register_key))
        .merge(observation_routes())
        .nest("/faults", fault_routes())
        .merge(release_routes())
        .route("/files/expire", post(expire_file))
}

/// What the sim received and answered, for tests to read.
fn observation_routes() -> Router<SharedSim> {
    Router::new()
        .route("/received", get(received).delete(clear_received))
        .route("/requests", get(requests))
        .route("/requests/{id}", get(request))
        .route("/requests/{id}/faults", post(set_request_faults))
}

/// Faults every later call of a kind meets, until cleared.
fn fault_routes() -> Router<SharedSim> {
    Router::new()
        .route("/submit", post(fault_submits))
        .route("/reads", post(fault_reads))
        .route("/requests", post(fault_requests))
        .route("/clear", post(clear_faults))
}

/// Held work let go, and the signing keys' availability.
fn release_routes() -> Router<SharedSim> {
    Router::new()
        .route("/requests/{id}/release", post(release))
        .route("/webhooks/release", post(release_webhooks))
        .route("/jwks/rotate", post(rotate))
        .route("/jwks/down", post(jwks_down))
}

impl Sim {
    pub(crate) fn register_key(&self, key: &str, kind: KeyKind) -> String {
        let mut inner = self.lock();
        let user_id = inner
            .accounts
            .get(key)
            .map(|a| a.user_id.clone())
            .unwrap_or_else(|| format!("sim-user-{}", uuid::Uuid::new_v4().simple()));
        inner.accounts.insert(
            key.to_owned(),
            Account {
                user_id: user_id.clone(),
                kind,
            },
        );
        user_id
    }

    pub(crate) fn fail_next_submits(&self, count: u32, fault: SubmitFault) {
        self.lock()
            .submit_faults
            .extend(std::iter::repeat_n(fault, count as usize));
    }

    pub(crate) fn fail_next_reads(&self, count: u32, fault: SubmitFault) {
        self.lock()
            .read_faults
            .extend(std::iter::repeat_n(fault, count as usize));
    }

    pub(crate) fn fault_next_requests(
        &self,
        count: u32,
        endpoint: Option<String>,
        faults: RequestFaults,
    ) {
        self.lock()
            .request_faults
            .extend(std::iter::repeat_n((endpoint, faults), count as usize));
    }

    /// Replaces the faults of an existing request; false when unknown.
    pub(crate) fn set_request_faults(&self, id: &str, faults: RequestFaults) -> bool {
        match self.lock().requests.get_mut(id) {
            Some(record) => {
                record.faults = faults;
                true
            }
            None => false,
        }
    }

    pub(crate) fn clear_faults(&self) {
        let mut inner = self.lock();
        inner.submit_faults.clear();
        inner.read_faults.clear();
        inner.request_faults.clear();
        inner.jwks_down = false;
    }

    pub(crate) fn set_jwks_down(&self, down: bool) {
        self.lock().jwks_down = down;
    }

    /// Ends the life of a CDN object now, as its lifecycle would: it answers 404 from here on.
    /// Accepts the object's public URL. False when the simulator holds no such object.
    pub(crate) fn expire_file(&self, url: &str) -> bool {
        let prefix = format!("{}/files/", self.urls.cdn);
        let Some(path) = url.strip_prefix(&prefix) else {
            return false;
        };
        match self.lock().files.get_mut(path) {
            Some(file) => {
                file.expires_at = Some(std::time::Instant::now());
                true
            }
            None => false,
        }
    }

    pub(crate) fn rotate_signing_key(&self, keep_old: bool) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rotate(keep_old);
    }

    pub(crate) fn received(&self) -> Vec<ReceivedRequest> {
        self.lock().log.clone()
    }

    pub(crate) fn clear_received(&self) {
        self.lock().log.clear();
    }

    pub(crate) fn report(&self, id: &str) -> Option<RequestReport> {
        self.lock().requests.get(id).map(|r| r.report())
    }

    pub(crate) fn reports(&self) -> Vec<RequestReport> {
        self.lock().requests.values().map(|r| r.report()).collect()
    }
}

/// Delivers every held webhook in the given order; returns how many.
pub(crate) fn release_held_webhooks(sim: &SharedSim, order: HeldWebhookOrder) -> usize {
    let mut held = std::mem::take(&mut sim.lock().held_webhooks);
    if order == HeldWebhookOrder::Reverse {
        held.reverse();
    }
    let count = held.len();
    let sim = sim.clone();
    // Sequential, so the order is the order of arrival at the receiver.
    tokio::spawn(async move {
        for id in held {
            let still_held = sim
                .lock()
                .requests
                .get(&id)
                .is_some_and(|r| r.webhook.outcome == WebhookOutcome::Held);
            if still_held {
                webhook::deliver_held(sim.clone(), id).await;
            }
        }
    });
    count
}

/// 204 when the target of a control call existed, 404 when it did not.
fn no_content_or_not_found(found: bool) -> StatusCode {
    if found {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn info(State(sim): State<SharedSim>) -> Response {
    json_response(
        StatusCode::OK,
        json!({
            "queue_url": sim.urls.queue,
            "rest_url": sim.urls.rest,
            "cdn_url": sim.urls.cdn,
            "jwks_url": format!("{}/.well-known/jwks.json", sim.urls.rest),
            "control_url": format!("{}/_sim", sim.urls.root),
        }),
    )
}

async fn received(State(sim): State<SharedSim>) -> Json<Vec<ReceivedRequest>> {
    Json(sim.received())
}

async fn clear_received(State(sim): State<SharedSim>) -> StatusCode {
    sim.clear_received();
    StatusCode::NO_CONTENT
}

async fn requests(State(sim): State<SharedSim>) -> Json<Vec<RequestReport>> {
    Json(sim.reports())
}

async fn request(State(sim): State<SharedSim>, Path(id): Path<String>) -> Response {
    match sim.report(&id) {
        Some(report) => Json(report).into_response(),
        None => detail_response(StatusCode::NOT_FOUND, "unknown request"),
    }
}

async fn set_request_faults(
    State(sim): State<SharedSim>,
    Path(id): Path<String>,
    Json(faults): Json<RequestFaults>,
) -> StatusCode {
    no_content_or_not_found(sim.set_request_faults(&id, faults))
}

async fn release(State(sim): State<SharedSim>, Path(id): Path<String>) -> StatusCode {
    no_content_or_not_found(worker::release(&sim, &id))
}

#[derive(Deserialize)]
struct KeyBody {
    key: String,
    kind: KeyKind,
}

async fn register_key(State(sim): State<SharedSim>, Json(body): Json<KeyBody>) -> Response {
    let user_id = sim.register_key(&body.key, body.kind);
    json_response(StatusCode::OK, json!({ "user_id": user_id }))
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct SubmitFaultBody {
    #[serde(default = "one")]
    count: u32,
    fault: SubmitFault,
}

async fn fault_submits(
    State(sim): State<SharedSim>,
    Json(body): Json<SubmitFaultBody>,
) -> StatusCode {
    sim.fail_next_submits(body.count, body.fault);
    StatusCode::NO_CONTENT
}

async fn fault_reads(
    State(sim): State<SharedSim>,
    Json(body): Json<SubmitFaultBody>,
) -> StatusCode {
    sim.fail_next_reads(body.count, body.fault);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct RequestFaultBody {
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    endpoint: Option<String>,
    faults: RequestFaults,
}

async fn fault_requests(
    State(sim): State<SharedSim>,
    Json(body): Json<RequestFaultBody>,
) -> StatusCode {
    sim.fault_next_requests(body.count, body.endpoint, body.faults);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(sim): State<SharedSim>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize, Default)]
struct ReleaseBody {
    #[serde(default)]
    order: HeldWebhookOrder,
}

async fn release_webhooks(
    State(sim): State<SharedSim>,
    body: Option<Json<ReleaseBody>>,
) -> Response {
    let order = body.map(|Json(b)| b.order).unwrap_or_default();
    let released = release_held_webhooks(&sim, order);
    json_response(StatusCode::OK, json!({ "released": released }))
}

#[derive(Deserialize, Default)]
struct RotateBody {
    #[serde(default)]
    keep_old: bool,
}

async fn rotate(State(sim): State<SharedSim>, body: Option<Json<RotateBody>>) -> StatusCode {
    sim.rotate_signing_key(body.map(|Json(b)| b.keep_old).unwrap_or_default());
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct DownBody {
    down: bool,
}

async fn jwks_down(State(sim): State<SharedSim>, Json(body): Json<DownBody>) -> StatusCode {
    sim.set_jwks_down(body.down);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ExpireBody {
    url: String,
}

async fn expire_file(State(sim): State<SharedSim>, Json(body): Json<ExpireBody>) -> StatusCode {
    no_content_or_not_found(sim.expire_file(&body.url))
}
