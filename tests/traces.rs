//! W3C trace context and OTLP span export: one training is one trace, from the request that
//! started it through fal's upload and submit, fal's callback and custody to the outbound
//! webhooks, as an OTLP receiver and the called parties see it.

use std::time::Duration;

use blackbox::otlp::{self, ReceivedSpan};
use blackbox::receiver::{fast_events, Receiver};
use blackbox::{FalOptions, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(60);

/// A fresh `traceparent` (sampled) and its trace and span ids.
fn new_traceparent() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

fn trace_id_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// A span of the fal client (its module), by name.
fn fal_call<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| {
            s.name == name
                && s.attribute("code.module.name")
                    .is_some_and(|m| m.starts_with("fal::"))
        })
        .collect()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn one_training_is_one_trace_from_request_to_webhook(pool: PgPool) {
    let otlp = otlp::receiver();
    let receiver = Receiver::start().await;
    let addrs = vec![receiver.addr()];
    let app =
        TestApp::spawn_with_fal_and(pool, FalOptions::default(), move |s| fast_events(s, &addrs))
            .await;
    let created = app
        .request(Method::POST, "/webhook-endpoints")
        .json(&json!({"url": receiver.url("/hook"), "event_types": ["training.succeeded"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let avatar = app.avatar_with_photos(10).await;

    let (traceparent, trace_id, caller_span) = new_traceparent();
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/train"))
        .header("traceparent", &traceparent)
        .json(&json!({"preset": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let training: Value = response.json().await.unwrap();
    let training_id = training["id"].as_str().unwrap().to_string();
    app.wait_for_json(
        &format!("/trainings/{training_id}"),
        "succeeded with its model in custody",
        |t| t["model"].is_object(),
    )
    .await;

    // The outbound webhook carries the training's trace.
    let delivered = receiver
        .wait_for("training.succeeded delivered", DEADLINE, |requests| {
            requests
                .iter()
                .any(|r| r.json()["type"] == "training.succeeded")
        })
        .await;
    for request in &delivered {
        assert_eq!(trace_id_of(request.header("traceparent")), trace_id);
    }

    // So does every call of the service's fal client: the archive upload, the submit, fetching
    // the result and copying the LoRA. (The simulator fetching the archive from itself is not
    // one; nor is the fetch of fal's signing keys, made once for no training in particular.)
    let sim = app.sim.as_ref().unwrap();
    let calls: Vec<_> = sim
        .received_requests()
        .into_iter()
        .filter(|r| {
            r.header("user-agent")
                .is_some_and(|agent| agent.starts_with("avatars-fal/"))
        })
        .collect();
    assert!(
        calls
            .iter()
            .any(|r| r.method == "POST" && r.path.starts_with("/queue/")),
        "a submit: {calls:#?}"
    );
    assert!(
        calls.iter().any(|r| r.path.contains("upload")),
        "an upload: {calls:#?}"
    );
    for call in &calls {
        let sent = call
            .header("traceparent")
            .unwrap_or_else(|| panic!("{} {} without a traceparent", call.method, call.path));
        assert_eq!(trace_id_of(sent), trace_id, "{} {}", call.method, call.path);
    }

    // And the collector gets the whole trace.
    let spans = otlp
        .wait_for_trace(&trace_id, "the training's whole trace", DEADLINE, |spans| {
            [
                "request",
                "submit_job",
                "apply_callback",
                "custody",
                "webhook_delivery",
            ]
            .iter()
            .all(|name| !named(spans, name).is_empty())
                && !fal_call(spans, "upload_file").is_empty()
                && !fal_call(spans, "submit").is_empty()
        })
        .await;
    assert!(spans
        .iter()
        .all(|s| s.service_name.as_deref() == Some(otlp::SERVICE_NAME)));
    // The request span is the child of the caller's span.
    let request = named(&spans, "request")
        .into_iter()
        .find(|s| s.attribute("path") == Some(&format!("/avatars/{avatar}/train")))
        .expect("the train request's span");
    assert_eq!(request.parent_span_id, caller_span);
    assert_eq!(request.attribute("method"), Some("POST"));
    // The worker continues the request's trace where the training was stored.
    let submit_job = named(&spans, "submit_job")[0];
    assert_eq!(submit_job.attribute("job_id"), Some(training_id.as_str()));
    assert!(
        spans.iter().any(|s| s.span_id == submit_job.parent_span_id),
        "the submit's parent is a span of the request"
    );
    // The fal calls are children of the submit, and fal saw their span ids.
    let submit_call = fal_call(&spans, "submit")[0];
    assert_eq!(submit_call.parent_span_id, submit_job.span_id);
    let sim_submit = calls
        .iter()
        .find(|r| r.method == "POST" && r.path.starts_with("/queue/"))
        .unwrap();
    assert_eq!(
        sim_submit.header("traceparent"),
        Some(format!("00-{trace_id}-{}-01", submit_call.span_id).as_str())
    );
    // The callback is applied in the training's trace, linked to the callback request's own.
    let applied = named(&spans, "apply_callback")[0];
    assert!(!applied.linked_trace_ids.is_empty(), "{applied:?}");
    assert_ne!(applied.linked_trace_ids[0], trace_id);
    let custody = named(&spans, "custody")[0];
    assert_eq!(custody.attribute("job_id"), Some(training_id.as_str()));
    // The webhook receiver saw the delivery span's id.
    let delivery_ids: Vec<String> = named(&spans, "webhook_delivery")
        .iter()
        .map(|s| format!("00-{trace_id}-{}-01", s.span_id))
        .collect();
    for request in &delivered {
        assert!(
            delivery_ids
                .iter()
                .any(|id| id == request.header("traceparent")),
            "{} not among {delivery_ids:?}",
            request.header("traceparent")
        );
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_malformed_traceparent_is_ignored(pool: PgPool) {
    let otlp = otlp::receiver();
    let app = TestApp::spawn(pool).await;
    let bad = "00-not-a-trace-01";
    let response = app
        .request(Method::GET, "/avatars")
        .header("traceparent", bad)
        .header("x-request-id", "malformed-traceparent")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The request is traced all the same, as the root of a trace of its own.
    let span = otlp
        .wait_for("the request's span", DEADLINE, |spans| {
            spans
                .iter()
                .find(|s| {
                    s.name == "request"
                        && s.attribute("request_id") == Some("malformed-traceparent")
                })
                .cloned()
                .ok_or_else(|| format!("{} spans", spans.len()))
        })
        .await;
    assert_eq!(span.parent_span_id, "", "{span:?}");
}
