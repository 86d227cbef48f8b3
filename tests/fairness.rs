//! Fair sharing between tenants: request rates per key, quotas, event streams per tenant, and a
//! webhook relay that one tenant's dead endpoints cannot monopolise.

use std::net::SocketAddr;
use std::time::Duration;

use blackbox::receiver::{fast_events, Receiver, Reply};
use blackbox::{problem, FalOptions, TestApp};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Bounds the wait for a stream to end; far longer than the key check interval.
const DEADLINE: Duration = Duration::from_secs(30);

async fn app_with(
    pool: PgPool,
    receivers: &[SocketAddr],
    configure: fn(&mut api::Settings),
) -> TestApp {
    let receivers = receivers.to_vec();
    TestApp::spawn_with(store::Store::new(pool), move |s| {
        fast_events(s, &receivers);
        configure(s);
    })
    .await
}

async fn create_endpoint(app: &TestApp, key: &str, url: &str) -> reqwest::Response {
    app.request_as(key, Method::POST, "/webhook-endpoints")
        .json(&json!({ "url": url }))
        .send()
        .await
        .expect("send")
}

async fn endpoint_id(app: &TestApp, key: &str, url: &str) -> String {
    let response = create_endpoint(app, key, url).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("id").to_string()
}

/// One `avatar.deleted` event for the key's tenant.
async fn an_event(app: &TestApp, key: &str) {
    let created: Value = app
        .request_as(key, Method::POST, "/avatars")
        .json(&json!({"name": "a", "kind": "character"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("avatar id");
    let deleted = app
        .request_as(key, Method::DELETE, &format!("/avatars/{id}"))
        .send()
        .await
        .expect("send");
    assert!(deleted.status().is_success(), "{}", deleted.status());
}

async fn open_stream(app: &TestApp, key: &str) -> reqwest::Response {
    app.request_as(key, Method::GET, "/events")
        .send()
        .await
        .expect("send")
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_others_do_not(pool: PgPool) {
    let app = app_with(pool, &[], |s| {
        s.tenants.key_requests_per_second = 1;
        s.tenants.key_request_burst = 3;
    })
    .await;
    let other = app.new_key("tenant-b").await;
    let mut statuses = Vec::new();
    let refused = loop {
        let response = app
            .request(Method::GET, "/avatars")
            .send()
            .await
            .expect("send");
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            break response;
        }
        assert!(statuses.len() < 20, "never limited: {statuses:?}");
    };
    assert_eq!(&statuses[..3], &[200, 200, 200], "the burst is allowed");
    let headers = refused.headers().clone();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(
        headers["ratelimit-policy"].to_str().unwrap(),
        "\"per-key\";q=3;w=3"
    );
    assert_eq!(
        headers["ratelimit"].to_str().unwrap(),
        format!("\"per-key\";r=0;t={retry_after}")
    );
    let (status, body) = problem(refused).await;
    assert_eq!(status, 429);
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["limit"], 3);
    let response = app
        .request_as(&other, Method::GET, "/avatars")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200, "another key has its own budget");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn webhook_endpoints_per_tenant_are_limited(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = app_with(pool, &[receiver.addr()], |s| {
        s.tenants.max_webhook_endpoints = 2;
    })
    .await;
    let url = receiver.url("/hook");
    let first = endpoint_id(&app, &app.key, &url).await;
    endpoint_id(&app, &app.key, &url).await;
    let (status, body) = problem(create_endpoint(&app, &app.key, &url).await).await;
    assert_eq!(status, 429, "{body:#}");
    assert_eq!(body["code"], "webhook_endpoint_quota_exceeded");
    assert_eq!(body["limit"], 2);
    let other = app.new_key("tenant-b").await;
    endpoint_id(&app, &other, &url).await;
    let deleted = app
        .request(Method::DELETE, &format!("/webhook-endpoints/{first}"))
        .send()
        .await
        .expect("send");
    assert_eq!(deleted.status(), 204);
    endpoint_id(&app, &app.key, &url).await;
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn open_streams_per_tenant_are_limited(pool: PgPool) {
    let app = app_with(pool, &[], |s| s.tenants.max_event_streams = 2).await;
    let first = open_stream(&app, &app.key).await;
    let second = open_stream(&app, &app.key).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let (status, body) = problem(open_stream(&app, &app.key).await).await;
    assert_eq!(status, 429, "{body:#}");
    assert_eq!(body["code"], "event_stream_quota_exceeded");
    assert_eq!(body["limit"], 2);
    let other = app.new_key("tenant-b").await;
    assert_eq!(open_stream(&app, &other).await.status(), 200);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_stream_is_woken_only_by_its_tenants_events(pool: PgPool) {
    let app = app_with(pool, &[], |_| {}).await;
    let other = app.new_key("tenant-b").await;
    let quiet = app
        .store
        .ensure_tenant("tenant-a")
        .await
        .expect("tenant")
        .id;
    let busy = app
        .store
        .ensure_tenant("tenant-b")
        .await
        .expect("tenant")
        .id;
    let _quiet_stream = open_stream(&app, &app.key).await;
    let mut busy_stream = open_stream(&app, &other).await.bytes_stream();
    for _ in 0..5 {
        an_event(&app, &other).await;
    }
    // The busy tenant's stream gets its events...
    let mut seen = String::new();
    while seen.matches("event: avatar.deleted").count() < 5 {
        let chunk = tokio::time::timeout(DEADLINE, busy_stream.next())
            .await
            .expect("events arrive")
            .expect("stream open")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let streams = &app.running().streams;
    assert!(streams.wakeups(busy) >= 1);
    // ...and the quiet tenant's stream was never woken for them.
    assert_eq!(streams.wakeups(quiet), 0);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_revoked_keys_streams_end(pool: PgPool) {
    let app = app_with(pool, &[], |s| {
        s.events.stream_key_check = Duration::from_millis(200);
    })
    .await;
    let (revoked_id, revoked) = api::auth::create_api_key(&app.store, "tenant-a", "doomed")
        .await
        .expect("key");
    let revoked = secrecy::ExposeSecret::expose_secret(&revoked).to_string();
    let mut doomed = open_stream(&app, &revoked).await.bytes_stream();
    let mut kept = open_stream(&app, &app.key).await.bytes_stream();
    app.store.revoke_api_key(revoked_id).await.expect("revoke");
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(chunk) = doomed.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the revoked key's stream never ended");
    // The other key's stream goes on: it still gets the tenant's events.
    an_event(&app, &app.key).await;
    let mut seen = String::new();
    while !seen.contains("event: avatar.deleted") {
        let chunk = tokio::time::timeout(DEADLINE, kept.next())
            .await
            .expect("an event arrives")
            .expect("stream open")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn black_holed_endpoints_of_one_tenant_do_not_hold_up_another(pool: PgPool) {
    let black_hole = Receiver::start().await;
    black_hole.set_default(Reply::Hold(200));
    let healthy = Receiver::start().await;
    let app = app_with(pool, &[black_hole.addr(), healthy.addr()], |s| {
        // One attempt to a black hole lasts far longer than this test may wait.
        s.events.delivery_timeout = Duration::from_secs(250);
        s.events.relay_lease = Duration::from_secs(300);
        s.tenants.max_webhook_endpoints = 20;
    })
    .await;
    for i in 0..16 {
        endpoint_id(&app, &app.key, &black_hole.url(&format!("/hole/{i}"))).await;
    }
    an_event(&app, &app.key).await;
    an_event(&app, &app.key).await;
    black_hole
        .wait_for("the black hole holds attempts", DEADLINE, |r| r.len() >= 4)
        .await;
    let other = app.new_key("tenant-b").await;
    endpoint_id(&app, &other, &healthy.url("/b")).await;
    let sent = std::time::Instant::now();
    an_event(&app, &other).await;
    // Delivered while every attempt to the black hole is still waiting for its answer.
    healthy.wait_for_requests_to("/b", 1, DEADLINE).await;
    println!(
        "another tenant's delivery arrived {:?} after its event, beside {} held attempts",
        sent.elapsed(),
        black_hole.requests().len()
    );
    let slots = app.running().settings.events.relay_tenant_slots;
    assert!(
        black_hole.requests().len() <= slots,
        "one tenant held {} slots, more than its share of {slots}",
        black_hole.requests().len()
    );
    black_hole.release();
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_endpoint_failing_for_too_long_is_disabled_with_an_event(pool: PgPool) {
    let failing = Receiver::start().await;
    failing.set_default(Reply::Status(500));
    let watcher = Receiver::start().await;
    let app = app_with(pool, &[failing.addr(), watcher.addr()], |s| {
        s.events.disable_after = Duration::from_secs(1);
    })
    .await;
    let bad = endpoint_id(&app, &app.key, &failing.url("/bad")).await;
    endpoint_id(&app, &app.key, &watcher.url("/watch")).await;
    an_event(&app, &app.key).await;
    let disabled = app
        .wait_for_json(
            &format!("/webhook-endpoints/{bad}"),
            "the failing endpoint is disabled",
            |e| e["enabled"] == false,
        )
        .await;
    assert_eq!(disabled["disabled_reason"], "failing");
    let requests = watcher.wait_for_requests_to("/watch", 2, DEADLINE).await;
    let announced = requests
        .iter()
        .map(|r| r.json())
        .find(|body| body["type"] == "webhook_endpoint.disabled")
        .expect("a webhook_endpoint.disabled event");
    assert_eq!(announced["data"]["id"], bad.as_str());
    assert_eq!(announced["data"]["disabled_reason"], "failing");
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.request(Method::POST, path)
        .json(&body)
        .send()
        .await
        .expect("send")
}

fn stall_next_fal_request(app: &TestApp, endpoint: Option<&str>) {
    app.sim.as_ref().expect("simulator").fault_next_requests(
        1,
        endpoint,
        fal_sim::RequestFaults {
            stall: true,
            ..fal_sim::RequestFaults::default()
        },
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn running_trainings_per_tenant_are_limited(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool, FalOptions::default(), |s| {
        s.tenants.max_active_trainings = 1;
    })
    .await;
    let first = app.avatar_with_photos(10).await;
    let second = app.avatar_with_photos(10).await;
    stall_next_fal_request(&app, None);
    let started = post(&app, &format!("/avatars/{first}/train"), json!({})).await;
    assert_eq!(started.status(), 202);
    let (status, body) =
        problem(post(&app, &format!("/avatars/{second}/train"), json!({})).await).await;
    assert_eq!(status, 429, "{body:#}");
    assert_eq!(body["code"], "training_quota_exceeded");
    assert_eq!(body["limit"], 1);
    let avatar = app
        .wait_for_json(&format!("/avatars/{second}"), "untouched", |_| true)
        .await;
    assert_eq!(
        avatar["status"], "ready",
        "the refused training left no trace"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn running_generations_per_tenant_are_limited(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool, FalOptions::default(), |s| {
        s.tenants.max_active_generations = 1;
    })
    .await;
    let avatar = app.avatar_with_photos(10).await;
    let trained = post(
        &app,
        &format!("/avatars/{avatar}/train"),
        json!({"preset": "fast"}),
    )
    .await;
    assert_eq!(trained.status(), 202);
    app.wait_for_json(&format!("/avatars/{avatar}"), "trained", |a| {
        a["status"] == "trained"
    })
    .await;
    let path = format!("/avatars/{avatar}/generations");
    stall_next_fal_request(&app, Some("fal-ai/flux-lora"));
    let running = post(&app, &path, json!({"prompt": "x", "preset": "fast"})).await;
    assert_eq!(running.status(), 202);
    let running: Value = running.json().await.expect("json");
    let retried = || {
        app.request(Method::POST, &path)
            .header("idempotency-key", "second-generation")
            .json(&json!({"prompt": "y", "preset": "fast"}))
            .send()
    };
    let (status, body) = problem(retried().await.expect("send")).await;
    assert_eq!(status, 429, "{body:#}");
    assert_eq!(body["code"], "generation_quota_exceeded");
    assert_eq!(body["limit"], 1);
    // Once the running one finishes, the tenant may generate again.
    let generation = running["id"].as_str().expect("id");
    let request_id = app
        .wait_for_json(&format!("/generations/{generation}"), "submitted", |g| {
            g["items"][0]["fal_request_id"].is_string()
        })
        .await["items"][0]["fal_request_id"]
        .as_str()
        .expect("request id")
        .to_string();
    assert!(app.sim.as_ref().expect("simulator").release(&request_id));
    app.wait_for_json(&format!("/generations/{generation}"), "finished", |g| {
        g["status"] == "succeeded"
    })
    .await;
    // The refusal was not kept as the key's answer: the same request now goes through.
    let again = retried().await.expect("send");
    assert_eq!(again.status(), 202);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_attempt_that_gets_no_answer_ends_at_the_deadline_and_frees_the_slot(pool: PgPool) {
    let black_hole = Receiver::start().await;
    black_hole.set_default(Reply::Hold(200));
    let app = app_with(pool, &[black_hole.addr()], |s| {
        s.events.delivery_timeout = Duration::from_secs(1);
        s.events.relay_lease = Duration::from_secs(2);
    })
    .await;
    let endpoint = endpoint_id(&app, &app.key, &black_hole.url("/hole")).await;
    an_event(&app, &app.key).await;
    let deliveries = app
        .wait_for_json(
            &format!("/webhook-endpoints/{endpoint}/deliveries"),
            "a second attempt after the first timed out",
            |page| page["items"][0]["attempt_count"].as_i64() >= Some(2),
        )
        .await;
    let delivery = deliveries["items"][0]["id"].as_str().expect("id");
    let detail = app
        .wait_for_json(
            &format!("/webhook-endpoints/{endpoint}/deliveries/{delivery}"),
            "the first attempt recorded",
            |d| d["attempts"][0]["outcome"] == "failed",
        )
        .await;
    let error = detail["attempts"][0]["error"].as_str().expect("error");
    assert!(error.starts_with("timeout"), "{error}");
    black_hole.release();
}
