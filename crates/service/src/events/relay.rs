//! The webhook relay: delivers sequenced events to tenants' endpoints.
//!
//! A relay claims an endpoint with a lease and a fencing token, then sends its due deliveries
//! one at a time in event order. Each attempt is recorded as started (under the fence) before
//! the request goes out, and its outcome after, so two relays never make the same attempt, and
//! a relay that dies mid-attempt leaves an attempt that the next holder marks abandoned before
//! trying again with the same `webhook-id`.

use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use safe_fetch::HeaderMap;
use store::webhooks::{AttemptResult, AttemptStart, DueDelivery, EndpointClaim, NextStep};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::context::Service;
use crate::events::signing;
use crate::metrics::WebhookAttempt;

/// Delays after failed attempts 1..=7 (Standard Webhooks' and Svix's schedule); the 8th
/// failure is final.
pub const RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Each delay varies by up to this share either way, so failing receivers are not hit by
/// synchronised waves.
const JITTER: f64 = 0.2;

/// Deliveries read per query while holding an endpoint.
const BATCH: i64 = 20;

/// The longest response text kept in the delivery log.
const SNIPPET_CHARS: usize = 1000;

pub async fn run(service: Service) {
    let settings = service.settings.events;
    let mut running = JoinSet::new();
    loop {
        let room = settings.relay_concurrency.saturating_sub(running.len());
        if room > 0 {
            match service
                .store
                .claim_endpoints(
                    service.worker_id,
                    settings.relay_lease,
                    room as i64,
                    settings.relay_tenant_slots as i64,
                )
                .await
            {
                Ok(claims) => {
                    for claim in claims {
                        running.spawn(deliver_to_endpoint(service.clone(), claim));
                    }
                }
                Err(error) => tracing::warn!(%error, "claiming webhook endpoints"),
            }
        }
        tokio::select! {
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = service.relay_wake.notified() => {}
            _ = tokio::time::sleep(settings.relay_poll) => {}
        }
    }
}

/// Sends the claimed endpoint's due deliveries in event order, then gives the endpoint up.
#[tracing::instrument(skip_all, fields(endpoint_id = %claim.endpoint_id, fence = claim.fence))]
async fn deliver_to_endpoint(service: Service, claim: EndpointClaim) {
    loop {
        let due = match service.store.due_deliveries(&claim, BATCH).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "reading due deliveries");
                break;
            }
        };
        if due.is_empty() {
            break;
        }
        for delivery in due {
            let span = tracing::info_span!(
                "webhook_delivery",
                delivery_id = %delivery.id,
                event_id = %delivery.event_id,
            );
            crate::trace_context::continue_trace(&span, delivery.traceparent.as_deref());
            match attempt(&service, &claim, &delivery).instrument(span).await {
                Ok(Held::Delivered) => {}
                // A failing endpoint gives its slot up at once: its other deliveries wait for
                // their turn behind other endpoints rather than each costing a timeout now.
                Ok(Held::Failed) => {
                    release(&service, &claim).await;
                    return;
                }
                // Another relay holds the endpoint now, or it was disabled.
                Ok(Held::Lost) => return,
                Err(error) => {
                    tracing::warn!(delivery = %delivery.id, %error, "recording a delivery attempt");
                    return;
                }
            }
        }
    }
    release(&service, &claim).await;
}

async fn release(service: &Service, claim: &EndpointClaim) {
    if let Err(error) = service.store.release_endpoint(claim).await {
        tracing::warn!(%error, "releasing a webhook endpoint");
    }
}

/// How an attempt left the endpoint this relay holds.
enum Held {
    /// Delivered, or nothing to do: go on with the next delivery.
    Delivered,
    /// The attempt failed: let other endpoints have the slot.
    Failed,
    /// Another relay holds the endpoint now, or it was disabled.
    Lost,
}

/// One attempt, unless the delivery stopped being due.
async fn attempt(
    service: &Service,
    claim: &EndpointClaim,
    delivery: &DueDelivery,
) -> Result<Held, store::StoreError> {
    let settings = service.settings.events;
    let started = match service
        .store
        .start_attempt(claim, delivery.id, settings.relay_lease)
        .await?
    {
        AttemptStart::Started(started) => started,
        AttemptStart::NotDue => return Ok(Held::Delivered),
        AttemptStart::LeaseLost => return Ok(Held::Lost),
    };
    let secrets = match crate::secrets::open_signing_secrets(
        &service.settings.secrets,
        &started.secrets,
    ) {
        Ok(secrets) => secrets,
        Err(problem) => {
            // Nothing is sent unsigned: the attempt fails and is retried on the schedule, so
            // deliveries resume once the key is back in SECRETS_KEYS.
            tracing::error!(endpoint_id = %claim.endpoint_id, %problem, "cannot sign a delivery");
            let result = unanswered(0, problem);
            let next = retry_after_failure(started.try_number, None, settings);
            return finish(service, claim, delivery, started.number, &result, next).await;
        }
    };
    let body = serde_json::to_vec(&delivery.payload).unwrap_or_default();
    let msg_id = delivery.event_id.to_string();
    let timestamp = Utc::now().timestamp();
    let mut headers = HeaderMap::new();
    let signature = signing::signature_header(&secrets, &msg_id, timestamp, &body);
    for (name, value) in [
        ("content-type", "application/json".to_string()),
        ("user-agent", "avatars-webhooks/1".to_string()),
        ("webhook-id", msg_id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ] {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    }
    crate::trace_context::inject_current(&mut headers);
    let sent_at = Instant::now();
    // The fetcher's deadline covers the whole attempt (resolving, connecting, sending,
    // reading), so a black hole costs one `delivery_timeout` per attempt and no more.
    let response = service
        .webhook_fetcher
        .post(&started.url, headers, body.into())
        .await;
    let latency_ms = u32::try_from(sent_at.elapsed().as_millis()).unwrap_or(u32::MAX);
    let (result, next) = match response {
        Ok(response) => {
            let status = response.status.as_u16();
            let succeeded = response.status.is_success();
            let snippet: String = String::from_utf8_lossy(&response.body_snippet)
                .chars()
                .take(SNIPPET_CHARS)
                .collect();
            let next = if succeeded {
                NextStep::Delivered
            } else if status == 410 {
                NextStep::EndpointGone
            } else {
                retry_after_failure(started.try_number, retry_after(&response.headers), settings)
            };
            (
                AttemptResult {
                    succeeded,
                    status_code: Some(status),
                    latency_ms,
                    error: (!succeeded).then(|| failure_text(status)),
                    response_snippet: Some(snippet).filter(|s| !s.is_empty()),
                },
                next,
            )
        }
        Err(error) => (
            unanswered(latency_ms, format!("{}: {error}", error.code())),
            retry_after_failure(started.try_number, None, settings),
        ),
    };
    service
        .metrics
        .webhook_attempt(match (result.status_code, &next) {
            (_, NextStep::Delivered) => WebhookAttempt::Delivered,
            (Some(410), _) => WebhookAttempt::Gone,
            (Some(_), _) => WebhookAttempt::Rejected,
            (None, _) => WebhookAttempt::Unreachable,
        });
    finish(service, claim, delivery, started.number, &result, next).await
}

/// An attempt that got no answer from the endpoint.
fn unanswered(latency_ms: u32, error: String) -> AttemptResult {
    AttemptResult {
        succeeded: false,
        status_code: None,
        latency_ms,
        error: Some(error),
        response_snippet: None,
    }
}

/// Records attempt `number`'s outcome and what the delivery does next.
async fn finish(
    service: &Service,
    claim: &EndpointClaim,
    delivery: &DueDelivery,
    number: i32,
    result: &AttemptResult,
    next: NextStep,
) -> Result<Held, store::StoreError> {
    service
        .store
        .finish_attempt(
            claim,
            delivery.id,
            number,
            result,
            next,
            service.settings.events.disable_after,
        )
        .await?;
    Ok(if result.succeeded {
        Held::Delivered
    } else {
        Held::Failed
    })
}

fn failure_text(status: u16) -> String {
    match status {
        300..=399 => format!("answered {status}: redirects are not followed"),
        410 => "answered 410 Gone: the endpoint is disabled".to_string(),
        _ => format!("answered {status}"),
    }
}

/// A `Retry-After` in seconds, if the receiver sent one.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// What follows the failed try `number` (counted since creation or the last replay): the next
/// try on the schedule (scaled, jittered, and
/// moved later, up to twice the delay, if the receiver asked for more time), or the end.
fn retry_after_failure(
    number: i32,
    asked: Option<Duration>,
    settings: crate::config::EventSettings,
) -> NextStep {
    let Some(base) = usize::try_from(number - 1)
        .ok()
        .and_then(|i| RETRY_SCHEDULE.get(i))
    else {
        return NextStep::Failed;
    };
    let base = base.mul_f64(settings.retry_scale);
    let delay = match asked {
        Some(asked) => asked.clamp(base, base * 2),
        None => base.mul_f64(1.0 + rand::thread_rng().gen_range(-JITTER..=JITTER)),
    };
    let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    NextStep::RetryAt(Utc::now() + delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(scale: f64) -> crate::config::EventSettings {
        crate::config::EventSettings {
            retry_scale: scale,
            ..Default::default()
        }
    }

    fn delay_of(next: NextStep) -> f64 {
        match next {
            NextStep::RetryAt(at) => (at - Utc::now()).num_milliseconds() as f64 / 1000.0,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn follows_the_schedule_within_the_jitter() {
        for (i, base) in RETRY_SCHEDULE.iter().enumerate() {
            let delay = delay_of(retry_after_failure(i as i32 + 1, None, settings(1.0)));
            let base = base.as_secs_f64();
            assert!(
                delay >= base * 0.8 - 1.0 && delay <= base * 1.2 + 1.0,
                "attempt {}: {delay}",
                i + 1
            );
        }
    }

    #[test]
    fn eight_failures_are_final() {
        assert_eq!(
            retry_after_failure(8, None, settings(1.0)),
            NextStep::Failed
        );
    }

    #[test]
    fn scales_for_tests() {
        let delay = delay_of(retry_after_failure(2, None, settings(0.01)));
        assert!((2.0..=3.7).contains(&delay), "{delay}");
    }

    #[test]
    fn honours_retry_after_up_to_twice_the_delay() {
        let asked = Some(Duration::from_secs(3600));
        let delay = delay_of(retry_after_failure(1, asked, settings(1.0)));
        assert!((9.0..=10.5).contains(&delay), "{delay}");
    }
}
