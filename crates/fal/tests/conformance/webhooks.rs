//! Webhooks end to end: the simulator signs and delivers, the client's `Verifier` checks.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use fal::models;
use fal::{SubmitOptions, Verifier, VerifierConfig, WebhookError, WebhookStatus};
use fal_sim::{
    HeldWebhookOrder, RequestFaults, SignatureFault, SimConfig, WebhookFaults, WebhookOutcome,
};

use crate::common::{self, received, Delivery, Env, Receiver, DEADLINE};

fn verifier(env: &Env) -> Verifier {
    Verifier::new(VerifierConfig::with_jwks_url(env.sim.jwks_url()))
}

fn jwks_fetches(env: &Env) -> usize {
    received(&env.sim, "GET", "/rest/.well-known/jwks.json").len()
}

/// Submits a generation with `faults` and returns the request id once its webhook settled.
async fn run_with_webhook(
    env: &Env,
    receiver: &Receiver,
    input: serde_json::Value,
    faults: WebhookFaults,
) -> String {
    env.sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            webhook: faults,
            ..Default::default()
        },
    );
    let options = SubmitOptions {
        webhook_url: Some(receiver.url.clone()),
        ..Default::default()
    };
    let s = env
        .client
        .submit(models::FLUX_LORA, &input, &options)
        .await
        .expect("submit");
    env.sim
        .wait_for_webhook(&s.request_id, DEADLINE)
        .await
        .expect("webhook settles");
    s.request_id
}

fn small_prompt(prompt: &str) -> serde_json::Value {
    serde_json::json!({"prompt": prompt, "image_size": {"width": 32, "height": 32}})
}

fn timestamp(delivery: &Delivery) -> i64 {
    delivery.headers["x-fal-webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn signed_ok_webhook_verifies_and_carries_the_result() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    let id = run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 1);
    let delivery = &deliveries[0];
    assert_eq!(delivery.headers["content-type"], "application/json");
    assert_eq!(delivery.headers["x-fal-webhook-request-id"], id.as_str());

    let verified = verifier(&env)
        .verify(&delivery.headers, &delivery.body)
        .await
        .expect("verifies");
    assert_eq!(verified.header_request_id, id);
    assert!(verified.user_id.starts_with("sim-user-"));
    assert_eq!(verified.body.request_id, id);
    assert_eq!(
        verified.body.gateway_request_id.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(verified.body.status, WebhookStatus::Ok);
    let result = env
        .client
        .result(&env.client.request_ref(models::FLUX_LORA, &id).unwrap())
        .await
        .unwrap();
    assert_eq!(
        verified.body.payload,
        Some(result),
        "payload is exactly the result"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn failed_request_sends_an_error_webhook_with_the_model_error() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    run_with_webhook(
        &env,
        &receiver,
        serde_json::json!({"image_size": "square"}),
        WebhookFaults::default(),
    )
    .await;
    let delivery = &receiver.deliveries()[0];
    let verified = verifier(&env)
        .verify(&delivery.headers, &delivery.body)
        .await
        .unwrap();
    assert_eq!(verified.body.status, WebhookStatus::Error);
    assert_eq!(
        verified.body.error.as_deref(),
        Some("Invalid status code: 422")
    );
    assert_eq!(
        verified.body.payload.unwrap()["detail"][0]["loc"],
        serde_json::json!(["body", "prompt"])
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn null_payload_webhook_keeps_payload_error() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    let faults = WebhookFaults {
        null_payload: true,
        ..Default::default()
    };
    run_with_webhook(&env, &receiver, small_prompt("x"), faults).await;
    let delivery = &receiver.deliveries()[0];
    let verified = verifier(&env)
        .verify(&delivery.headers, &delivery.body)
        .await
        .unwrap();
    assert_eq!(verified.body.payload, None);
    assert!(verified
        .body
        .payload_error
        .unwrap()
        .contains("not JSON serializable"));
    env.sim.shutdown().await;
}

#[tokio::test]
async fn each_missing_header_is_rejected() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let delivery = &receiver.deliveries()[0];
    let verifier = verifier(&env);
    for name in [
        "x-fal-webhook-request-id",
        "x-fal-webhook-user-id",
        "x-fal-webhook-timestamp",
        "x-fal-webhook-signature",
    ] {
        let mut headers = delivery.headers.clone();
        headers.remove(name);
        let err = verifier.verify(&headers, &delivery.body).await.unwrap_err();
        assert!(
            matches!(err, WebhookError::MissingHeader(n) if n == name),
            "{name}: {err:?}"
        );
    }
    env.sim.shutdown().await;
}

#[tokio::test]
async fn malformed_signatures_are_rejected_before_any_key_is_tried() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let delivery = &receiver.deliveries()[0];
    let good = delivery.headers["x-fal-webhook-signature"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(good.len(), 128);
    let verifier = verifier(&env);
    let non_hex = format!("zz{}", &good[2..]);
    let base64ish = "q".repeat(86);
    for bad in [
        non_hex,
        good[..126].to_owned(),
        format!("{good}00"),
        base64ish,
        String::new(),
    ] {
        let mut headers = delivery.headers.clone();
        headers.insert(
            "x-fal-webhook-signature",
            HeaderValue::from_str(&bad).unwrap(),
        );
        let err = verifier.verify(&headers, &delivery.body).await.unwrap_err();
        assert!(
            matches!(err, WebhookError::MalformedSignature),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(jwks_fetches(&env), 0);
    // A well-formed but wrong signature is a bad signature.
    let mut flipped = good.into_bytes();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    let mut headers = delivery.headers.clone();
    headers.insert(
        "x-fal-webhook-signature",
        HeaderValue::from_bytes(&flipped).unwrap(),
    );
    let err = verifier.verify(&headers, &delivery.body).await.unwrap_err();
    assert!(matches!(err, WebhookError::BadSignature), "{err:?}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn timestamps_more_than_300_seconds_away_are_stale() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let delivery = &receiver.deliveries()[0];
    let ts = timestamp(delivery);
    let verifier = verifier(&env);
    for now in [ts + 301, ts - 301] {
        let err = verifier
            .verify_at(&delivery.headers, &delivery.body, now)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                WebhookError::StaleTimestamp {
                    tolerance_seconds: 300,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    for now in [ts + 300, ts - 300, ts] {
        verifier
            .verify_at(&delivery.headers, &delivery.body, now)
            .await
            .expect("inside the window");
    }
    // Extreme values must not overflow.
    let err = verifier
        .verify_at(&delivery.headers, &delivery.body, i64::MIN)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WebhookError::InvalidHeader(_) | WebhookError::StaleTimestamp { .. }
        ),
        "{err:?}"
    );
    let mut headers = delivery.headers.clone();
    headers.insert(
        "x-fal-webhook-timestamp",
        HeaderValue::from_static("-9223372036854775808"),
    );
    let err = verifier
        .verify_at(&headers, &delivery.body, i64::MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::InvalidHeader(_)), "{err:?}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn stale_timestamp_and_wrong_key_faults_are_rejected() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    let stale = WebhookFaults {
        signature: SignatureFault::StaleTimestamp { seconds: 301 },
        ..Default::default()
    };
    run_with_webhook(&env, &receiver, small_prompt("x"), stale).await;
    let wrong = WebhookFaults {
        signature: SignatureFault::WrongKey,
        ..Default::default()
    };
    run_with_webhook(&env, &receiver, small_prompt("y"), wrong).await;
    let deliveries = receiver.deliveries();
    let verifier = verifier(&env);
    let err = verifier
        .verify(&deliveries[0].headers, &deliveries[0].body)
        .await
        .unwrap_err();
    assert!(
        matches!(err, WebhookError::StaleTimestamp { .. }),
        "{err:?}"
    );
    let err = verifier
        .verify(&deliveries[1].headers, &deliveries[1].body)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::BadSignature), "{err:?}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn unknown_key_triggers_one_refresh_and_rotation_is_followed() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    let verifier = Verifier::new(VerifierConfig {
        min_refresh_interval: Duration::ZERO,
        ..VerifierConfig::with_jwks_url(env.sim.jwks_url())
    });
    run_with_webhook(
        &env,
        &receiver,
        small_prompt("before"),
        WebhookFaults::default(),
    )
    .await;
    let first = receiver.deliveries()[0].clone();
    verifier
        .verify(&first.headers, &first.body)
        .await
        .expect("old key");
    assert_eq!(jwks_fetches(&env), 1);

    env.sim.rotate_signing_key(false);
    run_with_webhook(
        &env,
        &receiver,
        small_prompt("after"),
        WebhookFaults::default(),
    )
    .await;
    let second = receiver.deliveries()[1].clone();
    verifier
        .verify(&second.headers, &second.body)
        .await
        .expect("new key after one refresh");
    assert_eq!(jwks_fetches(&env), 2);
    // The old key is gone from the JWKS: its signature no longer verifies after a refresh.
    let err = verifier
        .verify(&first.headers, &first.body)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::BadSignature), "{err:?}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn forced_refreshes_are_limited_to_one_a_minute() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    let verifier = verifier(&env);
    run_with_webhook(&env, &receiver, small_prompt("a"), WebhookFaults::default()).await;
    let wrong = WebhookFaults {
        signature: SignatureFault::WrongKey,
        ..Default::default()
    };
    run_with_webhook(&env, &receiver, small_prompt("b"), wrong.clone()).await;
    run_with_webhook(&env, &receiver, small_prompt("c"), wrong).await;
    let deliveries = receiver.deliveries();
    verifier
        .verify(&deliveries[0].headers, &deliveries[0].body)
        .await
        .unwrap();
    for delivery in &deliveries[1..] {
        let err = verifier
            .verify(&delivery.headers, &delivery.body)
            .await
            .unwrap_err();
        assert!(matches!(err, WebhookError::BadSignature), "{err:?}");
    }
    assert_eq!(
        jwks_fetches(&env),
        1,
        "the initial fetch was under a minute ago: no refresh"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn jwks_down_is_unavailable_not_a_bad_signature() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let delivery = &receiver.deliveries()[0];
    env.sim.set_jwks_down(true);
    let err = verifier(&env)
        .verify(&delivery.headers, &delivery.body)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::JwksUnavailable(_)), "{err:?}");

    // With cached keys, a rotation while the JWKS is down cannot be followed: still 503-worthy.
    env.sim.set_jwks_down(false);
    let verifier = Verifier::new(VerifierConfig {
        min_refresh_interval: Duration::ZERO,
        ..VerifierConfig::with_jwks_url(env.sim.jwks_url())
    });
    verifier
        .verify(&delivery.headers, &delivery.body)
        .await
        .unwrap();
    env.sim.rotate_signing_key(false);
    run_with_webhook(&env, &receiver, small_prompt("y"), WebhookFaults::default()).await;
    env.sim.set_jwks_down(true);
    let rotated = &receiver.deliveries()[1];
    let err = verifier
        .verify(&rotated.headers, &rotated.body)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::JwksUnavailable(_)), "{err:?}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn pretty_printed_body_with_escapes_verifies_on_the_raw_bytes() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    let faults = WebhookFaults {
        pretty_escaped_body: true,
        ..Default::default()
    };
    run_with_webhook(
        &env,
        &receiver,
        small_prompt("caf\u{e9} cr\u{e8}me"),
        faults,
    )
    .await;
    let delivery = &receiver.deliveries()[0];
    let raw = std::str::from_utf8(&delivery.body).unwrap();
    assert!(raw.contains("caf\\u00e9"), "{raw}");
    assert!(raw.contains('\n'));
    assert!(
        raw.find("\"status\"").unwrap() < raw.find("\"payload\"").unwrap(),
        "unusual key order"
    );
    let verifier = verifier(&env);
    let verified = verifier
        .verify(&delivery.headers, &delivery.body)
        .await
        .expect("raw bytes verify");
    assert_eq!(
        verified.body.payload.unwrap()["prompt"],
        "caf\u{e9} cr\u{e8}me"
    );
    // Re-serialising the parsed JSON changes the bytes and breaks the signature.
    let reserialised =
        serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&delivery.body).unwrap())
            .unwrap();
    let err = verifier
        .verify(&delivery.headers, &reserialised)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::BadSignature), "{err:?}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn padded_jwks_keys_are_accepted() {
    let env = common::start_with(SimConfig {
        jwks_x_padding: true,
        ..SimConfig::fast()
    })
    .await;
    let jwks: serde_json::Value = reqwest::get(env.sim.jwks_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(jwks["keys"][0]["x"].as_str().unwrap().ends_with('='));
    let receiver = Receiver::start(vec![]).await;
    run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let delivery = &receiver.deliveries()[0];
    verifier(&env)
        .verify(&delivery.headers, &delivery.body)
        .await
        .expect("padded x accepted");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn deliveries_retry_on_non_2xx_and_stop_on_redirects() {
    let env = common::start().await;
    let flaky = Receiver::start(vec![
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::NOT_FOUND,
    ])
    .await;
    let id = run_with_webhook(&env, &flaky, small_prompt("x"), WebhookFaults::default()).await;
    let report = env.sim.request(&id).unwrap();
    assert_eq!(report.webhook.outcome, WebhookOutcome::Delivered);
    let statuses: Vec<_> = report.webhook.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500), Some(404), Some(200)]);
    let bodies: Vec<_> = flaky.deliveries().into_iter().map(|d| d.body).collect();
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every attempt carries the same body"
    );

    let redirecting = Receiver::start(vec![StatusCode::TEMPORARY_REDIRECT]).await;
    let id = run_with_webhook(
        &env,
        &redirecting,
        small_prompt("x"),
        WebhookFaults::default(),
    )
    .await;
    let report = env.sim.request(&id).unwrap();
    assert_eq!(report.webhook.outcome, WebhookOutcome::Failed);
    assert_eq!(
        report.webhook.attempts.len(),
        1,
        "a redirect is a permanent failure"
    );
    assert_eq!(redirecting.deliveries().len(), 1);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn exhausted_retries_fail_delivery_and_polling_still_works() {
    let env = common::start_with(SimConfig {
        webhook_retry_delays: vec![Duration::from_secs(1); 3],
        ..SimConfig::fast()
    })
    .await;
    let receiver = Receiver::start(vec![StatusCode::SERVICE_UNAVAILABLE; 10]).await;
    let id = run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let report = env.sim.request(&id).unwrap();
    assert_eq!(report.webhook.outcome, WebhookOutcome::Failed);
    assert_eq!(report.webhook.attempts.len(), 4);
    let request = env.client.request_ref(models::FLUX_LORA, &id).unwrap();
    assert!(env
        .client
        .status(&request, false)
        .await
        .unwrap()
        .is_completed());
    env.sim.shutdown().await;
}

#[tokio::test]
async fn dropped_delayed_duplicated_and_reordered_webhooks() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;

    let dropped = run_with_webhook(
        &env,
        &receiver,
        small_prompt("drop"),
        WebhookFaults {
            drop: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        env.sim.request(&dropped).unwrap().webhook.outcome,
        WebhookOutcome::Dropped
    );
    assert!(receiver.deliveries().is_empty());

    let duplicated = run_with_webhook(
        &env,
        &receiver,
        small_prompt("dup"),
        WebhookFaults {
            duplicates: 2,
            delay_ms: 20,
            ..Default::default()
        },
    )
    .await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 3);
    assert!(deliveries
        .iter()
        .all(|d| d.headers["x-fal-webhook-request-id"] == duplicated.as_str()));
    assert_eq!(env.sim.request(&duplicated).unwrap().webhook.deliveries, 3);

    // Two held webhooks released in reverse arrive in reverse completion order.
    let hold = RequestFaults {
        webhook: WebhookFaults {
            hold: true,
            ..Default::default()
        },
        ..Default::default()
    };
    env.sim.fault_next_requests(2, None, hold);
    let options = SubmitOptions {
        webhook_url: Some(receiver.url.clone()),
        ..Default::default()
    };
    let first = env
        .client
        .submit(models::FLUX_LORA, &small_prompt("1"), &options)
        .await
        .unwrap()
        .request_id;
    env.sim
        .wait_until(DEADLINE, "first held", |sim| {
            sim.request(&first)
                .is_some_and(|r| r.webhook.outcome == WebhookOutcome::Held)
        })
        .await
        .unwrap();
    let second = env
        .client
        .submit(models::FLUX_LORA, &small_prompt("2"), &options)
        .await
        .unwrap()
        .request_id;
    env.sim
        .wait_until(DEADLINE, "second held", |sim| {
            sim.request(&second)
                .is_some_and(|r| r.webhook.outcome == WebhookOutcome::Held)
        })
        .await
        .unwrap();
    assert_eq!(env.sim.release_held_webhooks(HeldWebhookOrder::Reverse), 2);
    env.sim.wait_for_webhook(&first, DEADLINE).await.unwrap();
    let order: Vec<String> = receiver.deliveries()[3..]
        .iter()
        .map(|d| {
            d.headers["x-fal-webhook-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(order, [second, first]);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn control_api_drives_the_same_knobs_over_http() {
    let env = common::start().await;
    let control = env.sim.control_url();
    let http = reqwest::Client::new();
    let info: serde_json::Value = http
        .get(format!("{control}/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["queue_url"], env.sim.queue_url().as_str());
    let user: serde_json::Value = http
        .post(format!("{control}/keys"))
        .json(&serde_json::json!({"key": "locked:secret", "kind": "billing_locked"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(user["user_id"].is_string());
    let status = http
        .post(format!("{control}/faults/submit"))
        .json(&serde_json::json!({"count": 1, "fault": {"kind": "respond", "status": 502}}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let s = env
        .client
        .submit(
            models::FLUX_LORA,
            &small_prompt("x"),
            &SubmitOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        received(&env.sim, "POST", "/queue/fal-ai/flux-lora").len(),
        2,
        "502 once, then accepted"
    );
    let report: serde_json::Value = http
        .get(format!("{control}/requests/{}", s.request_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["endpoint"], "fal-ai/flux-lora");
    let log: Vec<serde_json::Value> = http
        .get(format!("{control}/received"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        log.iter()
            .all(|r| !r["path"].as_str().unwrap().starts_with("/_sim")),
        "control calls are not logged"
    );
    let down = http
        .post(format!("{control}/jwks/down"))
        .json(&serde_json::json!({"down": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 204);
    assert_eq!(
        reqwest::get(env.sim.jwks_url()).await.unwrap().status(),
        503
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn cache_ttl_bounds_how_long_keys_are_used() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let delivery = &receiver.deliveries()[0];
    let verifier = Verifier::new(VerifierConfig {
        cache_ttl: Duration::ZERO,
        ..VerifierConfig::with_jwks_url(env.sim.jwks_url())
    });
    verifier
        .verify(&delivery.headers, &delivery.body)
        .await
        .unwrap();
    verifier
        .verify(&delivery.headers, &delivery.body)
        .await
        .unwrap();
    assert_eq!(jwks_fetches(&env), 2, "expired keys are fetched again");
    env.sim.set_jwks_down(true);
    let err = verifier
        .verify(&delivery.headers, &delivery.body)
        .await
        .unwrap_err();
    assert!(
        matches!(err, WebhookError::JwksUnavailable(_)),
        "expired keys are not used: {err:?}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn one_unreachable_jwks_location_is_tolerated() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let delivery = &receiver.deliveries()[0];
    let dead = url::Url::parse("http://127.0.0.1:1/.well-known/jwks.json").unwrap();
    let verifier = Verifier::new(VerifierConfig {
        jwks_urls: vec![dead, env.sim.jwks_url()],
        ..VerifierConfig::default()
    });
    verifier
        .verify(&delivery.headers, &delivery.body)
        .await
        .expect("keys from the live location");
    env.sim.shutdown().await;
}

/// A JWKS location serving the simulator's keys that can be told to hold each request until
/// released, as a JWKS host that stopped answering does.
struct HeldJwks {
    url: url::Url,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    arrived: std::sync::Arc<tokio::sync::Notify>,
    release: std::sync::Arc<tokio::sync::Notify>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HeldJwks {
    async fn start(upstream: url::Url) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Self {
            url: url::Url::parse(&format!("http://{addr}/jwks.json")).unwrap(),
            hold: Default::default(),
            arrived: Default::default(),
            release: Default::default(),
            fetches: Default::default(),
        };
        let (hold, arrived, release, fetches) = (
            held.hold.clone(),
            held.arrived.clone(),
            held.release.clone(),
            held.fetches.clone(),
        );
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (hold, arrived, release, fetches, upstream) = (
                    hold.clone(),
                    arrived.clone(),
                    release.clone(),
                    fetches.clone(),
                    upstream.clone(),
                );
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    if hold.load(Ordering::SeqCst) {
                        arrived.notify_one();
                        release.notified().await;
                    }
                    let body = reqwest::get(upstream).await.unwrap().bytes().await.unwrap();
                    ([("content-type", "application/json")], body)
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        held
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_refresh_in_flight_never_holds_up_verification_with_known_keys() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let good = &receiver.deliveries()[0];
    let jwks = HeldJwks::start(env.sim.jwks_url()).await;
    let verifier = Verifier::new(VerifierConfig {
        min_refresh_interval: Duration::ZERO,
        // The held fetch ends only when the test releases it.
        fetch_timeout: Duration::from_secs(600),
        ..VerifierConfig::with_jwks_url(jwks.url.clone())
    });
    verifier.verify(&good.headers, &good.body).await.unwrap();
    assert_eq!(jwks.fetches(), 1);

    // A forged callback forces a refresh, and the JWKS host stops answering.
    jwks.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let forged = {
        let verifier = verifier.clone();
        let headers = good.headers.clone();
        let mut body = good.body.to_vec();
        body.push(b' ');
        tokio::spawn(async move { verifier.verify(&headers, &body).await })
    };
    tokio::time::timeout(DEADLINE, jwks.arrived.notified())
        .await
        .expect("the forced refresh reaches the JWKS host");

    // Meanwhile a genuine callback verifies with the keys at hand.
    let verified = tokio::time::timeout(DEADLINE, verifier.verify(&good.headers, &good.body))
        .await
        .expect("verification does not wait for the refresh in flight");
    assert!(verified.is_ok(), "{verified:?}");

    jwks.release.notify_one();
    let forged = tokio::time::timeout(DEADLINE, forged)
        .await
        .expect("the refresh ends once the host answers")
        .unwrap();
    assert!(
        matches!(forged, Err(WebhookError::BadSignature)),
        "{forged:?}"
    );
    assert_eq!(jwks.fetches(), 2);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn concurrent_verifications_without_keys_share_one_fetch() {
    let env = common::start().await;
    let receiver = Receiver::start(vec![]).await;
    run_with_webhook(&env, &receiver, small_prompt("x"), WebhookFaults::default()).await;
    let good = receiver.deliveries()[0].clone();
    let jwks = HeldJwks::start(env.sim.jwks_url()).await;
    jwks.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let verifier = Verifier::new(VerifierConfig::with_jwks_url(jwks.url.clone()));
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let (verifier, good) = (verifier.clone(), good.clone());
            tokio::spawn(async move { verifier.verify(&good.headers, &good.body).await })
        })
        .collect();
    tokio::time::timeout(DEADLINE, jwks.arrived.notified())
        .await
        .expect("one fetch starts");
    jwks.release.notify_one();
    for verification in waiting {
        let result = tokio::time::timeout(DEADLINE, verification)
            .await
            .expect("every verification ends")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(jwks.fetches(), 1);
    env.sim.shutdown().await;
}
