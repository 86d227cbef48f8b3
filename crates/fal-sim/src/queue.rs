//! Queue API: submit, status, status stream, result, cancel, under `/queue`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::faults::SubmitFault;
use crate::http::{
    authenticate, detail_response, json_response, paying_account, ConnectionControl,
};
use crate::models;
use crate::record::QueueState;
use crate::state::{Outcome, RequestRecord, SharedSim, Sim};
use crate::worker::{self, Admission};

/// Routes `/queue/{...}` by shape: `…/requests/{id}[/status[/stream]|/cancel]` or a submit.
pub(crate) async fn dispatch(
    State(sim): State<SharedSim>,
    connection: Option<Extension<ConnectionControl>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches("/queue/").trim_matches('/');
    let segments: Vec<&str> = path.split('/').collect();
    let query = uri.query().unwrap_or("");
    let requests_at = segments.iter().position(|s| *s == "requests");
    match requests_at {
        Some(at) if at >= 2 && segments.len() > at + 1 => {
            let app = segments[..at].join("/");
            let id = segments[at + 1];
            let rest: Vec<&str> = segments[at + 2..].to_vec();
            if let Some(response) = read_fault(&sim) {
                return response;
            }
            match (method, rest.as_slice()) {
                (Method::GET, []) => result(&sim, &headers, &app, id),
                (Method::GET, ["status"]) => status(&sim, &headers, &app, id, query),
                (Method::GET, ["status", "stream"]) => {
                    stream(sim.clone(), &headers, &app, id, query)
                }
                (Method::PUT, ["cancel"]) => cancel(&sim, &headers, &app, id),
                _ => detail_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
            }
        }
        _ if method == Method::POST => {
            submit(
                &sim,
                connection.map(|Extension(c)| c),
                path,
                query,
                &headers,
                body,
            )
            .await
        }
        _ => detail_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
    }
}

async fn submit(
    sim: &SharedSim,
    connection: Option<ConnectionControl>,
    endpoint: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let account = match paying_account(sim, headers) {
        Ok(account) => account,
        Err(e) => return e.into_response(),
    };
    let Some(spec) = models::find(endpoint) else {
        // The body fal gives for an unknown app is [UNVERIFIED].
        return detail_response(
            StatusCode::NOT_FOUND,
            format!("Application '{endpoint}' not found"),
        );
    };
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };

    let fault = sim.lock().submit_faults.pop_front();
    let mut close_after_accept = false;
    let mut hold_answer = false;
    match fault {
        Some(SubmitFault::CloseConnection { enqueue: false }) => return close(connection).await,
        Some(SubmitFault::CloseConnection { enqueue: true }) => close_after_accept = true,
        Some(SubmitFault::HoldResponse) => hold_answer = true,
        Some(respond @ SubmitFault::Respond { .. }) => {
            return fault_response(respond).expect("a Respond fault answers")
        }
        None => {}
    }

    let input: Value = match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            return detail_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                vec![crate::models::body_not_a_dict()],
            )
        }
    };
    if sim.config.validate_at_submit {
        if let Err(issues) = spec.validate(&input) {
            return detail_response(StatusCode::UNPROCESSABLE_ENTITY, issues);
        }
    }
    let max_queue_length = match param("fal_max_queue_length").map(|v| v.parse::<usize>()) {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return detail_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!([{"loc": ["query", "fal_max_queue_length"], "msg": "value is not a valid integer", "type": "type_error.integer"}]),
            )
        }
        None => None,
    };
    let low_priority = headers
        .get("x-fal-queue-priority")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("low"));
    let start_deadline = headers
        .get("x-fal-request-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64);

    let output_expiry = headers
        .get("x-fal-object-lifecycle-preference")
        .and_then(|v| serde_json::from_slice::<Value>(v.as_bytes()).ok())
        .and_then(|v| v.get("expiration_duration_seconds").and_then(Value::as_u64))
        .map(Duration::from_secs);
    let admission = Admission {
        output_expiry,
        account,
        spec,
        input,
        webhook_url: param("fal_webhook"),
        low_priority,
        start_deadline,
        max_queue_length,
    };
    let Some((id, position)) = worker::admit(sim, admission) else {
        // fal_max_queue_length exceeded; body shape [INF].
        return json_response(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"detail": "Maximum queue length exceeded", "error_type": "queue_length_exceeded"}),
        );
    };
    if close_after_accept {
        return close(connection).await;
    }
    if hold_answer {
        if let Ok(permit) = sim.held_submits.acquire().await {
            permit.forget();
        }
    }
    let app = models::app_path(endpoint).unwrap_or_else(|| endpoint.to_owned());
    let urls = request_urls(sim, &app, &id);
    let mut response = json_response(
        StatusCode::OK,
        json!({
            "request_id": id,
            "gateway_request_id": id,
            "status": "IN_QUEUE",
            "queue_position": position,
            "response_url": urls.response,
            "status_url": urls.status,
            "cancel_url": urls.cancel,
        }),
    );
    insert_request_id(&mut response, &id);
    response
}

/// A pending fault for status/result/cancel/stream calls, answered before anything else (as
/// a gateway error would be).
fn read_fault(sim: &Sim) -> Option<Response> {
    // Closing is meaningful for submits only; for reads it is ignored.
    let fault = sim.lock().read_faults.pop_front()?;
    fault_response(fault)
}

/// Closes the connection without answering.
async fn close(connection: Option<ConnectionControl>) -> Response {
    match connection {
        Some(control) => {
            control.0.cancel();
            std::future::pending::<Response>().await
        }
        None => detail_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "connection control unavailable",
        ),
    }
}

/// The answer a `Respond` fault gives; `None` for a `CloseConnection` fault, which answers
/// nothing.
fn fault_response(fault: SubmitFault) -> Option<Response> {
    let SubmitFault::Respond {
        status,
        body,
        error_type,
        retry_after_secs,
        with_request_id,
        user_timeout,
    } = fault
    else {
        return None;
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = body.unwrap_or_else(|| default_error_body(status, error_type.as_deref()));
    let mut response = json_response(status, body);
    let headers = response.headers_mut();
    if let Some(error_type) = error_type
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert("x-fal-error-type", error_type);
    }
    if let Some(secs) = retry_after_secs {
        headers.insert("retry-after", HeaderValue::from(secs));
    }
    if user_timeout {
        headers.insert(
            "x-fal-request-timeout-type",
            HeaderValue::from_static("user"),
        );
    }
    if with_request_id {
        insert_request_id(&mut response, &uuid::Uuid::new_v4().to_string());
    }
    Some(response)
}

/// fal's body for a status when the fault gives none.
fn default_error_body(status: StatusCode, error_type: Option<&str>) -> Value {
    let detail = match status.as_u16() {
        401 => crate::accounts::UNKNOWN_KEY_DETAIL.to_owned(),
        403 => crate::accounts::BILLING_LOCK_DETAIL.to_owned(),
        429 => "Too many requests".to_owned(),
        _ => status.canonical_reason().unwrap_or("Error").to_owned(),
    };
    match error_type {
        Some(t) => json!({"detail": detail, "error_type": t}),
        None => json!({"detail": detail}),
    }
}

pub(crate) struct RequestUrls {
    pub status: String,
    pub response: String,
    pub cancel: String,
}

/// The URLs fal returns: owner/alias only (never the subpath).
pub(crate) fn request_urls(sim: &Sim, app: &str, id: &str) -> RequestUrls {
    let base = format!("{}/{}/requests/{}", sim.urls.queue, app, id);
    RequestUrls {
        status: format!("{base}/status"),
        cancel: format!("{base}/cancel"),
        response: base,
    }
}

fn insert_request_id(response: &mut Response, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-fal-request-id", value);
    }
}

fn not_found() -> Response {
    json_response(StatusCode::NOT_FOUND, json!({"status": "NOT_FOUND"}))
}

/// Finds a request the caller may see through `app`: either `owner/alias` or, as fal also
/// answers, the full endpoint id. Another account's request is "not found". `f` runs under the
/// state lock and must not lock again.
fn with_request<T>(
    sim: &Sim,
    headers: &HeaderMap,
    app: &str,
    id: &str,
    f: impl FnOnce(&Sim, &crate::state::Inner, &RequestRecord) -> T,
) -> Result<T, Denied> {
    let account = authenticate(sim, headers).map_err(Denied::Auth)?;
    let inner = sim.lock();
    let record = inner.requests.get(id).ok_or(Denied::NotFound)?;
    let path_matches = record.app_path == app || record.endpoint == app;
    if !path_matches || record.user_id != account.user_id {
        return Err(Denied::NotFound);
    }
    Ok(f(sim, &inner, record))
}

/// Why a request lookup was refused.
enum Denied {
    Auth(crate::http::AuthError),
    NotFound,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Auth(e) => e.into_response(),
            Denied::NotFound => not_found(),
        }
    }
}

fn position_of(inner: &crate::state::Inner, record: &RequestRecord) -> u64 {
    inner
        .waiting
        .get(&record.endpoint)
        .and_then(|q| q.iter().position(|w| *w == record.id))
        .unwrap_or(0) as u64
}

/// `logs=1|0|true|false` (fal-js sends 1/0, the Python client true/false).
fn wants_logs(query: &str) -> bool {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "logs")
        .is_some_and(|(_, v)| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The status body and its HTTP status (202 while queued or running, 200 when done).
pub(crate) fn status_body(
    sim: &Sim,
    record: &RequestRecord,
    position: u64,
    with_logs: bool,
) -> (StatusCode, Value) {
    let urls = request_urls(sim, &record.app_path, &record.id);
    let mut body = json!({
        "request_id": record.id,
        "response_url": urls.response,
        "status_url": urls.status,
        "cancel_url": urls.cancel,
    });
    let logs = || -> Value {
        if with_logs {
            Value::Array(
                record
                    .logs
                    .iter()
                    .map(|l| json!({"message": l.message, "level": l.level, "source": "USER", "timestamp": l.timestamp}))
                    .collect(),
            )
        } else {
            Value::Null
        }
    };
    match record.state {
        QueueState::InQueue => {
            body["status"] = "IN_QUEUE".into();
            body["queue_position"] = position.into();
            (StatusCode::ACCEPTED, body)
        }
        QueueState::InProgress => {
            body["status"] = "IN_PROGRESS".into();
            body["logs"] = logs();
            (StatusCode::ACCEPTED, body)
        }
        QueueState::Completed => {
            body["status"] = "COMPLETED".into();
            body["logs"] = logs();
            match &record.outcome {
                Some(Outcome::Success { inference_time, .. }) => {
                    body["metrics"] = json!({"inference_time": inference_time});
                }
                Some(Outcome::Failure {
                    error, error_type, ..
                }) => {
                    body["metrics"] = json!({});
                    body["error"] = error.clone().into();
                    body["error_type"] = error_type.clone().into();
                }
                None => body["metrics"] = json!({}),
            }
            (StatusCode::OK, body)
        }
    }
}

fn status(sim: &SharedSim, headers: &HeaderMap, app: &str, id: &str, query: &str) -> Response {
    let with_logs = wants_logs(query);
    let found = with_request(sim, headers, app, id, |sim, inner, record| {
        status_body(sim, record, position_of(inner, record), with_logs)
    });
    match found {
        Ok((code, body)) => {
            let mut response = json_response(code, body);
            insert_request_id(&mut response, id);
            response
        }
        Err(denied) => denied.into_response(),
    }
}

fn result(sim: &SharedSim, headers: &HeaderMap, app: &str, id: &str) -> Response {
    let found = with_request(sim, headers, app, id, |_, _, record| {
        match (&record.state, &record.outcome) {
            (
                QueueState::Completed,
                Some(Outcome::Success {
                    output,
                    billable_units,
                    ..
                }),
            ) => {
                let mut response = json_response(StatusCode::OK, output.clone());
                response
                    .headers_mut()
                    .insert("x-fal-billable-units", HeaderValue::from(*billable_units));
                response
            }
            (
                QueueState::Completed,
                Some(Outcome::Failure {
                    http_status,
                    body,
                    error_type,
                    user_timeout,
                    ..
                }),
            ) => {
                let code =
                    StatusCode::from_u16(*http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut response = json_response(code, body.clone());
                if let Ok(value) = HeaderValue::from_str(error_type) {
                    response.headers_mut().insert("x-fal-error-type", value);
                }
                if *user_timeout {
                    response.headers_mut().insert(
                        "x-fal-request-timeout-type",
                        HeaderValue::from_static("user"),
                    );
                }
                response
            }
            // One third-party note reports this for a result fetched too early.
            _ => detail_response(StatusCode::BAD_REQUEST, "Request is still in progress"),
        }
    });
    match found {
        Ok(mut response) => {
            insert_request_id(&mut response, id);
            response
        }
        Err(denied) => denied.into_response(),
    }
}

fn cancel(sim: &SharedSim, headers: &HeaderMap, app: &str, id: &str) -> Response {
    if let Err(denied) = with_request(sim, headers, app, id, |_, _, _| ()) {
        return denied.into_response();
    }
    match worker::cancel(sim, id) {
        worker::CancelResult::Requested => json_response(
            StatusCode::ACCEPTED,
            json!({"status": "CANCELLATION_REQUESTED"}),
        ),
        worker::CancelResult::AlreadyCompleted => json_response(
            StatusCode::BAD_REQUEST,
            json!({"status": "ALREADY_COMPLETED"}),
        ),
        worker::CancelResult::NotFound => not_found(),
    }
}

fn stream(sim: SharedSim, headers: &HeaderMap, app: &str, id: &str, query: &str) -> Response {
    if let Err(denied) = with_request(&sim, headers, app, id, |_, _, _| ()) {
        return denied.into_response();
    }
    let with_logs = wants_logs(query);
    let id = id.to_owned();
    let ping = sim.config.stream_ping_interval;
    struct Cursor {
        sim: SharedSim,
        id: String,
        last: Option<String>,
        done: bool,
    }
    let cursor = Cursor {
        sim,
        id,
        last: None,
        done: false,
    };
    let events = futures_util::stream::unfold(cursor, move |mut cursor| async move {
        if cursor.done {
            return None;
        }
        loop {
            let sim = cursor.sim.clone();
            let notified = sim.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let current = {
                let inner = cursor.sim.lock();
                inner.requests.get(&cursor.id).map(|record| {
                    let position = position_of(&inner, record);
                    let (_, body) = status_body(&cursor.sim, record, position, with_logs);
                    (body.to_string(), record.state == QueueState::Completed)
                })
            };
            let (text, completed) = current?;
            if cursor.last.as_deref() != Some(text.as_str()) {
                cursor.last = Some(text.clone());
                cursor.done = completed;
                return Some((Ok::<_, Infallible>(Event::default().data(text)), cursor));
            }
            // Re-check at least every 250 ms in case a change was missed.
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(ping).text("ping"))
        .into_response()
}
