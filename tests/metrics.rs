//! What an operator reads on `/metrics` after real work: fal calls and callbacks, job states
//! and transitions, the account's state, backlogs and lags.

use std::net::SocketAddr;
use std::time::Duration;

use blackbox::receiver::{fast_events, Receiver, Reply};
use blackbox::scrape::Scrape;
use blackbox::{FalOptions, TestApp};
use fal_sim::{KeyKind, RequestFaults, WebhookFaults};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Scrapes until `done` holds.
async fn scrape_until(app: &TestApp, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    app.eventually(what, || async {
        let scrape = app.scrape().await;
        if done(&scrape) {
            Ok(scrape)
        } else {
            Err(scrape.text)
        }
    })
    .await
}

fn callbacks(scrape: &Scrape, outcome: &str) -> Option<f64> {
    scrape.value("avatars_fal_callbacks_total", &[("outcome", outcome)])
}

fn jobs(scrape: &Scrape, kind: &str, status: &str) -> Option<f64> {
    scrape.value("avatars_jobs", &[("kind", kind), ("status", status)])
}

/// How many jobs of `kind` entered `status`, by the transitions.
fn finished(scrape: &Scrape, kind: &str, status: &str) -> f64 {
    scrape.sum(
        "avatars_job_transitions_total",
        &[("kind", kind), ("to", status)],
    )
}

/// Posts a callback signed with the simulator's key, as fal would; returns the status and
/// the body.
async fn post_signed(app: &TestApp, request_id: &str, body: &Value, timestamp: i64) -> u16 {
    let body = body.to_string().into_bytes();
    let sim = app.sim.as_ref().unwrap();
    let mut request = app.client.post(app.url("/webhooks/fal")).body(body.clone());
    for (name, value) in sim.webhook_headers(request_id, "sim-user", timestamp, &body) {
        request = request.header(name, value);
    }
    request.send().await.unwrap().status().as_u16()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn train(app: &TestApp, avatar: &str) -> String {
    let started = app.start_training(avatar, json!({})).await;
    started["id"].as_str().unwrap().to_string()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn one_training_shows_its_fal_calls_transitions_and_callback(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool.clone(), FalOptions::default()).await;

    // Every series of a fixed set is there from the start, at zero.
    let before = app.scrape().await;
    for outcome in [
        "applied",
        "duplicate",
        "ignored",
        "unknown_request",
        "bad_signature",
        "stale",
    ] {
        assert_eq!(callbacks(&before, outcome), Some(0.0), "{outcome}");
    }
    assert_eq!(jobs(&before, "training", "pending"), Some(0.0));
    assert_eq!(jobs(&before, "generation", "in_progress"), Some(0.0));
    // Finished jobs are counted by their transitions, not by a gauge.
    assert_eq!(jobs(&before, "training", "succeeded"), None);
    assert_eq!(finished(&before, "training", "succeeded"), 0.0);

    let avatar = app.avatar_with_photos(10).await;
    let id = train(&app, &avatar).await;
    let done = app
        .wait_for_json(&format!("/trainings/{id}"), "trained", |t| {
            t["model"].is_object()
        })
        .await;
    let after = app.scrape().await;
    assert_eq!(callbacks(&after, "applied"), Some(1.0), "{}", after.text);
    assert_eq!(after.sum("avatars_jobs", &[("kind", "training")]), 0.0);
    for (from, to) in [("pending", "uploading"), ("uploading", "submitted")] {
        assert_eq!(
            after.value(
                "avatars_job_transitions_total",
                &[("kind", "training"), ("from", from), ("to", to)]
            ),
            Some(1.0),
            "{from} -> {to}: {}",
            after.text
        );
    }
    assert_eq!(
        after.sum(
            "avatars_job_transitions_total",
            &[("kind", "training"), ("to", "succeeded")]
        ),
        1.0
    );
    // The archive went up once, the submit once, and the LoRA came back into our storage.
    for operation in ["upload", "submit"] {
        assert_eq!(
            after.value(
                "avatars_fal_calls_total",
                &[("operation", operation), ("result", "ok")]
            ),
            Some(1.0),
            "{operation}: {}",
            after.text
        );
        assert_eq!(
            after.value(
                "avatars_fal_call_duration_seconds_count",
                &[("operation", operation)]
            ),
            Some(1.0)
        );
    }
    assert!(
        after.sum(
            "avatars_fal_calls_total",
            &[("operation", "download"), ("result", "ok")]
        ) >= 1.0
    );
    for quiet in [
        "avatars_custody_backlog",
        "avatars_result_fetch_backlog",
        "avatars_fal_billing_locked",
        "avatars_fal_unauthorized",
    ] {
        assert_eq!(after.value(quiet, &[]), Some(0.0), "{quiet}");
    }
    assert_eq!(after.sum("avatars_jobs_overdue", &[]), 0.0);
    assert_eq!(
        after.value("avatars_db_pool_max_connections", &[]),
        Some(f64::from(pool.options().get_max_connections()))
    );
    assert!(after.value("avatars_db_pool_connections", &[("state", "in_use")]) >= Some(0.0));

    // fal calling again about the finished request changes nothing: once with another body
    // (ignored), then with the very same body (a duplicate).
    let request_id = done["fal_request_id"].as_str().unwrap();
    let late =
        json!({"request_id": request_id, "status": "ERROR", "error": "late", "payload": null});
    assert_eq!(post_signed(&app, request_id, &late, now()).await, 200);
    assert_eq!(post_signed(&app, request_id, &late, now()).await, 200);
    let last = app.scrape().await;
    assert_eq!(callbacks(&last, "applied"), Some(1.0));
    assert_eq!(callbacks(&last, "ignored"), Some(1.0));
    assert_eq!(callbacks(&last, "duplicate"), Some(1.0));
    assert_eq!(finished(&last, "training", "succeeded"), 1.0);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn refused_and_unknown_callbacks_are_counted_by_reason(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let body = json!({"request_id": "r-1", "status": "OK", "payload": {}});

    // Signed for another body.
    let sim = app.sim.as_ref().unwrap();
    let mut forged = app
        .client
        .post(app.url("/webhooks/fal"))
        .body(json!({"request_id": "r-1", "status": "OK", "payload": {"x": 1}}).to_string());
    for (name, value) in sim.webhook_headers("r-1", "u", now(), body.to_string().as_bytes()) {
        forged = forged.header(name, value);
    }
    assert_eq!(forged.send().await.unwrap().status(), 401);
    // Signed an hour ago: a replay.
    assert_eq!(post_signed(&app, "r-1", &body, now() - 3600).await, 401);
    // Genuine, for a request we do not know; then again.
    assert_eq!(post_signed(&app, "r-1", &body, now()).await, 200);
    assert_eq!(post_signed(&app, "r-1", &body, now()).await, 200);

    let scrape = app.scrape().await;
    for (outcome, count) in [
        ("bad_signature", 1.0),
        ("stale", 1.0),
        ("unknown_request", 1.0),
        ("duplicate", 1.0),
        ("applied", 0.0),
        ("ignored", 0.0),
    ] {
        assert_eq!(
            callbacks(&scrape, outcome),
            Some(count),
            "{outcome}: {}",
            scrape.text
        );
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_locked_fal_account_shows_until_fal_accepts_a_submit_again(pool: PgPool) {
    let key = "key-metrics-locked:secret";
    let options = FalOptions {
        key: Some(key.to_string()),
        ..FalOptions::default()
    };
    let app = TestApp::spawn_with_fal(pool, options).await;
    let sim = app.sim.as_ref().unwrap();
    sim.register_key(key, KeyKind::BillingLocked);
    let avatar = app.avatar_with_photos(10).await;

    let refused = train(&app, &avatar).await;
    app.wait_for_json(&format!("/trainings/{refused}"), "failed", |t| {
        t["status"] == "failed"
    })
    .await;
    let locked = app.scrape().await;
    assert_eq!(locked.value("avatars_fal_billing_locked", &[]), Some(1.0));
    assert_eq!(locked.value("avatars_fal_unauthorized", &[]), Some(0.0));
    assert!(
        locked.sum("avatars_fal_calls_total", &[("result", "billing_locked")]) >= 1.0,
        "{}",
        locked.text
    );
    assert_eq!(finished(&locked, "training", "failed"), 1.0);

    // The account is topped up: the next training goes through and the state clears.
    sim.register_key(key, KeyKind::Valid);
    let accepted = train(&app, &avatar).await;
    app.wait_for_json(&format!("/trainings/{accepted}"), "trained", |t| {
        t["model"].is_object()
    })
    .await;
    let cleared = app.scrape().await;
    assert_eq!(cleared.value("avatars_fal_billing_locked", &[]), Some(0.0));
    assert_eq!(finished(&cleared, "training", "succeeded"), 1.0);
    assert_eq!(cleared.sum("avatars_jobs", &[]), 0.0);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_rejected_key_shows_as_unauthorized(pool: PgPool) {
    let options = FalOptions {
        key: Some("key-nobody-issued:secret".into()),
        ..FalOptions::default()
    };
    let app = TestApp::spawn_with_fal(pool, options).await;
    let avatar = app.avatar_with_photos(10).await;
    let id = train(&app, &avatar).await;
    app.wait_for_json(&format!("/trainings/{id}"), "failed", |t| {
        t["status"] == "failed"
    })
    .await;
    let scrape = app.scrape().await;
    assert_eq!(scrape.value("avatars_fal_unauthorized", &[]), Some(1.0));
    assert!(scrape.sum("avatars_fal_calls_total", &[("result", "unauthorized")]) >= 1.0);
}

/// fal finished, but the callback does not come: the job stays in flight past its deadline
/// while no reconciliation runs.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_job_whose_callback_does_not_come_shows_as_overdue(pool: PgPool) {
    let options = FalOptions {
        training_timeout: Duration::from_secs(2),
        ..FalOptions::default()
    };
    let app = TestApp::spawn_with_fal_and(pool, options, |settings| {
        settings.workers.reconcile_tick = Duration::from_secs(3600);
    })
    .await;
    app.sim.as_ref().unwrap().fault_next_requests(
        1,
        None,
        RequestFaults {
            webhook: WebhookFaults {
                hold: true,
                ..WebhookFaults::default()
            },
            ..RequestFaults::default()
        },
    );
    let avatar = app.avatar_with_photos(10).await;
    // 5 steps are expected to take 1.8 s: within the 2 s timeout.
    app.start_training(&avatar, json!({"overrides": {"steps": 5}}))
        .await;
    let scrape = scrape_until(&app, "the training is overdue", |s| {
        s.value("avatars_jobs_overdue", &[("kind", "training")]) == Some(1.0)
    })
    .await;
    assert_eq!(jobs(&scrape, "training", "submitted"), Some(1.0));
    assert_eq!(
        scrape.value("avatars_jobs_overdue", &[("kind", "generation")]),
        Some(0.0)
    );
    assert_eq!(callbacks(&scrape, "applied"), Some(0.0));
}

/// The trained LoRA expired at fal before we copied it: custody cannot finish, and says so.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn custody_that_cannot_finish_shows_as_a_backlog(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    app.hold_next_callback();
    let avatar = app.avatar_with_photos(10).await;
    train(&app, &avatar).await;
    app.expire_lora_then_release_callback().await;

    // The gauges are read by separate statements, so a transition between them can show the
    // backlog before the job counts as finishing: wait for both.
    let scrape = scrape_until(&app, "custody is stuck and has waited", |s| {
        s.value("avatars_custody_backlog", &[]) == Some(1.0)
            && s.value(
                "avatars_jobs",
                &[("kind", "training"), ("status", "finishing")],
            ) == Some(1.0)
            && s.value("avatars_custody_oldest_seconds", &[]) > Some(0.0)
            && s.sum("avatars_fal_calls_total", &[("operation", "download")])
                > s.sum(
                    "avatars_fal_calls_total",
                    &[("operation", "download"), ("result", "ok")],
                )
    })
    .await;
    assert_eq!(callbacks(&scrape, "applied"), Some(1.0));
    // fal's success moved the training to finishing; nothing succeeded while custody is stuck.
    assert_eq!(finished(&scrape, "training", "finishing"), 1.0);
    assert_eq!(finished(&scrape, "training", "succeeded"), 0.0);
}

async fn app_with_endpoint(
    pool: PgPool,
    receiver: &Receiver,
    configure: impl FnOnce(&mut api::Settings),
) -> TestApp {
    let addrs: Vec<SocketAddr> = vec![receiver.addr()];
    let app = TestApp::spawn_with(store::Store::new(pool), move |settings| {
        fast_events(settings, &addrs);
        configure(settings);
    })
    .await;
    let response = app
        .request(Method::POST, "/webhook-endpoints")
        .json(&json!({"url": receiver.url("/hook")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    app
}

/// Creates and deletes an avatar: one `avatar.deleted` event.
async fn delete_an_avatar(app: &TestApp) {
    let avatar = app
        .create_avatar(json!({"name": "gone", "kind": "character"}))
        .await;
    let response = app
        .request(
            Method::DELETE,
            &format!("/avatars/{}", avatar["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn webhook_attempts_are_counted_by_outcome(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = app_with_endpoint(pool, &receiver, |_| {}).await;
    delete_an_avatar(&app).await;
    scrape_until(&app, "one delivery", |s| {
        s.value(
            "avatars_webhook_attempts_total",
            &[("outcome", "delivered")],
        ) == Some(1.0)
    })
    .await;
    receiver.set_default(Reply::Status(500));
    delete_an_avatar(&app).await;
    let scrape = scrape_until(&app, "a rejected attempt", |s| {
        s.value("avatars_webhook_attempts_total", &[("outcome", "rejected")]) >= Some(1.0)
    })
    .await;
    assert_eq!(
        scrape.value(
            "avatars_webhook_attempts_total",
            &[("outcome", "delivered")]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("avatars_sequencer_lag_seconds", &[]),
        Some(0.0)
    );
}

/// No relay takes the endpoint's deliveries: they wait, and the lag grows.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn deliveries_no_relay_sends_show_as_delivery_lag(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = app_with_endpoint(pool, &receiver, |settings| {
        settings.events.relay_concurrency = 0;
    })
    .await;
    delete_an_avatar(&app).await;
    let scrape = scrape_until(&app, "a delivery waiting", |s| {
        s.value("avatars_webhook_deliveries_due", &[]) == Some(1.0)
            && s.value("avatars_webhook_delivery_lag_seconds", &[]) > Some(0.0)
    })
    .await;
    assert!(receiver.requests().is_empty());
    assert_eq!(
        scrape.sum("avatars_webhook_attempts_total", &[]),
        0.0,
        "{}",
        scrape.text
    );
}

/// The sequencer does not run (it looks once an hour here): events wait for a position.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn events_waiting_for_the_sequencer_show_as_sequencer_lag(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.events.sequencer_poll = Duration::from_secs(3600);
    })
    .await;
    let idle = app.scrape().await;
    assert_eq!(idle.value("avatars_sequencer_lag_seconds", &[]), Some(0.0));
    delete_an_avatar(&app).await;
    scrape_until(&app, "an event waiting", |s| {
        s.value("avatars_sequencer_lag_seconds", &[]) > Some(0.0)
    })
    .await;
}
