//! Signed webhook delivery: body `{request_id, gateway_request_id, status, payload, error,
//! payload_error}`, ED25519 signature headers, retries on non-2xx with a scaled schedule, 3xx as
//! a permanent failure, and the delivery faults.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::WebhookRequestIdHeader;
use crate::faults::{SignatureFault, WebhookFaults};
use crate::json_text;
use crate::record::{DeliveryAttempt, WebhookOutcome};
use crate::state::{Outcome, SharedSim};

/// `payload_error` fal sends when it could not serialise a payload (fal-js#153).
const PAYLOAD_ERROR: &str = "Response payload is not JSON serializable. Either return a JSON serializable object or use the queue endpoint to retrieve the response.";

/// Delivers (or drops, or holds) the webhook of a completed request.
pub(crate) async fn deliver(sim: SharedSim, id: String) {
    let faults = match sim.lock().requests.get(&id) {
        Some(record) => record.faults.webhook.clone(),
        None => return,
    };
    if faults.drop {
        set_outcome(&sim, &id, WebhookOutcome::Dropped);
        return;
    }
    if faults.hold {
        sim.lock().held_webhooks.push(id.clone());
        set_outcome(&sim, &id, WebhookOutcome::Held);
        return;
    }
    deliver_now(sim, id, faults).await;
}

/// Delivers a held webhook.
pub(crate) async fn deliver_held(sim: SharedSim, id: String) {
    let faults = match sim.lock().requests.get(&id) {
        Some(record) => record.faults.webhook.clone(),
        None => return,
    };
    set_outcome(&sim, &id, WebhookOutcome::Pending);
    deliver_now(sim, id, faults).await;
}

fn set_outcome(sim: &SharedSim, id: &str, outcome: WebhookOutcome) {
    if let Some(record) = sim.lock().requests.get_mut(id) {
        record.webhook.outcome = outcome;
    }
    sim.notify();
}

fn record_attempt(sim: &SharedSim, id: &str, attempt: DeliveryAttempt, delivered: bool) {
    if let Some(record) = sim.lock().requests.get_mut(id) {
        record.webhook.attempts.push(attempt);
        if delivered {
            record.webhook.deliveries += 1;
        }
    }
    sim.notify();
}

/// A delivery attempt as [`post`] ended: the receiver's status, or why there was none.
fn attempt_of(result: Result<u16, String>) -> DeliveryAttempt {
    match result {
        Ok(status) => DeliveryAttempt {
            status: Some(status),
            error: None,
        },
        Err(error) => DeliveryAttempt {
            status: None,
            error: Some(error),
        },
    }
}

/// The body fal posts, as a JSON value.
fn body_value(request_id: &str, outcome: &Outcome, null_payload: bool) -> Value {
    let mut body = match outcome {
        Outcome::Success { output, .. } => json!({
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "OK",
            "payload": output,
        }),
        Outcome::Failure {
            http_status, body, ..
        } => json!({
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "ERROR",
            "error": format!("Invalid status code: {http_status}"),
            "payload": body,
        }),
    };
    if null_payload {
        body["payload"] = Value::Null;
        body["payload_error"] = PAYLOAD_ERROR.into();
    }
    body
}

async fn deliver_now(sim: SharedSim, id: String, faults: WebhookFaults) {
    if faults.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
    }
    let prepared = {
        let inner = sim.lock();
        inner.requests.get(&id).and_then(|record| {
            let url = record.webhook_url.clone()?;
            let outcome = record.outcome.clone()?;
            Some((url, record.user_id.clone(), outcome))
        })
    };
    let Some((url, user_id, outcome)) = prepared else {
        return;
    };
    let value = body_value(&id, &outcome, faults.null_payload);
    let body = if faults.pretty_escaped_body {
        json_text::pretty_escaped(&value).into_bytes()
    } else {
        value.to_string().into_bytes()
    };
    // The header id is the queue request id unless configured otherwise (gateway id equals it
    // here: the simulator does not retry runners).
    let header_id = match sim.config.webhook_request_id_header {
        WebhookRequestIdHeader::RequestId | WebhookRequestIdHeader::GatewayRequestId => id.clone(),
    };

    let delays = sim.config.webhook_retry_delays.clone();
    let mut attempt = 0usize;
    let delivered = loop {
        let tried =
            attempt_of(post(&sim, &url, &header_id, &user_id, &body, &faults.signature).await);
        match tried.status {
            Some(status) if (200..300).contains(&status) => {
                record_attempt(&sim, &id, tried, true);
                break true;
            }
            Some(status) if (300..400).contains(&status) => {
                // Redirects are not followed and end delivery (fal 2026 docs).
                let error = Some("redirect: permanent failure".into());
                record_attempt(&sim, &id, DeliveryAttempt { error, ..tried }, false);
                break false;
            }
            _ => record_attempt(&sim, &id, tried, false),
        }
        let Some(delay) = delays.get(attempt) else {
            break false;
        };
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(sim.config.scaled(*delay)) => {}
            _ = sim.shutdown.cancelled() => return,
        }
    };
    if delivered {
        for _ in 0..faults.duplicates {
            let attempt =
                attempt_of(post(&sim, &url, &header_id, &user_id, &body, &faults.signature).await);
            let ok = attempt.status.is_some_and(|s| (200..300).contains(&s));
            record_attempt(&sim, &id, attempt, ok);
        }
    }
    set_outcome(
        &sim,
        &id,
        if delivered {
            WebhookOutcome::Delivered
        } else {
            WebhookOutcome::Failed
        },
    );
}

/// One signed POST; each attempt is signed afresh with the current time.
async fn post(
    sim: &SharedSim,
    url: &str,
    header_id: &str,
    user_id: &str,
    body: &[u8],
    signature_fault: &SignatureFault,
) -> Result<u16, String> {
    let now = chrono::Utc::now().timestamp();
    let (timestamp, wrong_key) = match signature_fault {
        SignatureFault::None => (now, false),
        SignatureFault::WrongKey => (now, true),
        SignatureFault::StaleTimestamp { seconds } => (now - seconds, false),
    };
    let timestamp = timestamp.to_string();
    let signature = sim
        .keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sign(wrong_key, header_id, user_id, &timestamp, body);
    let response = sim
        .http
        .post(url)
        .timeout(sim.config.webhook_timeout)
        .header("content-type", "application/json")
        .header("x-fal-webhook-request-id", header_id)
        .header("x-fal-webhook-user-id", user_id)
        .header("x-fal-webhook-timestamp", &timestamp)
        .header("x-fal-webhook-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    Ok(response.status().as_u16())
}
