use std::time::Duration;

use blackbox::{problem, FalOptions, TestApp};
use fal_sim::{FailSpec, KeyKind, RequestFaults, SignatureFault, SubmitFault, WebhookFaults};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(60);

async fn training(app: &TestApp, id: &str) -> Value {
    app.get_json(&format!("/trainings/{id}")).await
}

async fn trained_app(pool: PgPool, options: FalOptions) -> (TestApp, String) {
    let app = TestApp::spawn_with_fal(pool, options).await;
    let avatar = app.avatar_with_photos(10).await;
    (app, avatar)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_portrait_training_reaches_trained_by_webhook_alone(pool: PgPool) {
    let (app, avatar) = trained_app(pool.clone(), FalOptions::default()).await;
    let started = app.start_training(&avatar, json!({})).await;
    assert_eq!(started["status"], "pending");
    assert_eq!(started["trainer"], "portrait");
    assert_eq!(started["endpoint"], "fal-ai/flux-lora-portrait-trainer");
    assert_eq!(started["preset"], "balanced");
    assert_eq!(started["parameters"]["steps"], 1000);
    assert_eq!(started["estimated_cost_usd"], 2.4);
    let id = started["id"].as_str().unwrap().to_string();

    let done = app
        .wait_for_training(&id, "succeeded with a model", |t| t["model"].is_object())
        .await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["error"], Value::Null);

    // The sim delivered the webhook; the reconciler (hourly here) never ran a status lookup.
    let sim = app.sim.as_ref().unwrap();
    let request_id = done["fal_request_id"].as_str().unwrap();
    let report = sim.request(request_id).unwrap();
    assert!(
        matches!(report.webhook.outcome, fal_sim::WebhookOutcome::Delivered),
        "{:?}",
        report.webhook
    );
    let lookups = sim
        .received_requests()
        .iter()
        .filter(|r| r.path.contains("/status"))
        .count();
    assert_eq!(lookups, 0, "completed by webhook alone");

    // The LoRA weights are in our storage, byte for byte, with the recorded hash.
    let output = report.output.unwrap();
    let fal_url = output["diffusers_lora_file"]["url"].as_str().unwrap();
    let from_fal = reqwest::get(fal_url).await.unwrap().bytes().await.unwrap();
    assert_eq!(done["model"]["artifact_sha256"], sha256_hex(&from_fal));
    assert_eq!(done["model"]["artifact_bytes"], from_fal.len());
    let stored: Vec<_> = app
        .blob_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".safetensors"))
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        sha256_hex(&std::fs::read(&stored[0]).unwrap()),
        sha256_hex(&from_fal)
    );

    let avatar_now: Value = app.get_json(&format!("/avatars/{avatar}")).await;
    assert_eq!(avatar_now["status"], "trained");
    assert_eq!(avatar_now["trained_model"]["model_type"], "lora");
    assert_eq!(avatar_now["trained_model"]["training_id"], id);

    // fal got our archive with 10 images and the trigger phrase.
    let input = &report.input;
    assert_eq!(input["trigger_phrase"], avatar_now["trigger_phrase"]);
    assert_eq!(input["steps"], 1000);
    let webhook_url = report.webhook_url.unwrap();
    assert!(
        webhook_url.contains(&format!("job={id}")) && webhook_url.contains("token="),
        "{webhook_url}"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_style_avatar_trains_a_pro_finetune(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = app
        .create_avatar(json!({"name": "style", "kind": "style"}))
        .await;
    let id = avatar["id"].as_str().unwrap();
    let files = (0..10)
        .map(|i| (format!("s{i}.jpg"), blackbox::images::jpeg(70 + i)))
        .collect();
    assert_eq!(app.upload(id, files).await.status(), 201);

    let started = app.start_training(id, json!({"preset": "quality"})).await;
    assert_eq!(started["trainer"], "pro");
    assert_eq!(started["parameters"]["iterations"], 1000);
    assert_eq!(
        started["estimated_cost_usd"],
        Value::Null,
        "pro pricing is unknown"
    );
    assert!(started["deprecation"]
        .as_str()
        .unwrap()
        .contains("deprecated"));
    let done = app
        .wait_for_training(started["id"].as_str().unwrap(), "trained", |t| {
            t["model"].is_object()
        })
        .await;
    assert_eq!(done["model"]["model_type"], "finetune");
    let finetune_id = done["model"]["finetune_id"].as_str().unwrap();
    assert!(!finetune_id.is_empty());
    let avatar_now: Value = app.get_json(&format!("/avatars/{id}")).await;
    assert_eq!(avatar_now["trained_model"]["finetune_id"], finetune_id);
    let input = &app
        .sim
        .as_ref()
        .unwrap()
        .request(done["fal_request_id"].as_str().unwrap())
        .unwrap()
        .input;
    assert_eq!(input["mode"], "style");
    assert_eq!(input["trigger_word"], avatar_now["trigger_phrase"]);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn training_requests_are_validated_before_anything_is_spent(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = app.avatar_with_photos(3).await;
    let path = format!("/avatars/{avatar}/train");

    let (status, body) = problem(
        app.request(Method::POST, &path)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (409, "photo_set_not_trainable")
    );
    assert_eq!(
        (
            body["photo_count"].as_u64(),
            body["min_photos"].as_u64(),
            body["max_photos"].as_u64()
        ),
        (Some(3), Some(10), Some(20))
    );

    for (request, field, code) in [
        (json!({"preset": "turbo"}), "preset", "invalid_value"),
        (json!({"trainer": "dalle"}), "trainer", "invalid_value"),
        (
            json!({"overrides": {"steps": 0}}),
            "overrides.steps",
            "out_of_range",
        ),
        (
            json!({"overrides": {"stpes": 10}}),
            "overrides.stpes",
            "unknown_field",
        ),
        (
            json!({"trainer": "pro", "overrides": {"lora_rank": 24}}),
            "overrides.lora_rank",
            "invalid_value",
        ),
        (
            json!({"trainer": "pro", "overrides": {"iterations": 50}}),
            "overrides.iterations",
            "out_of_range",
        ),
        (
            json!({"trigger_phrase": "a b"}),
            "trigger_phrase",
            "invalid_format",
        ),
        (json!({"colour": 1}), "colour", "unknown_field"),
        (
            json!({"images_data_url": "http://10.0.0.1/x.zip"}),
            "images_data_url",
            "scheme_not_allowed",
        ),
    ] {
        let (status, body) = problem(
            app.request(Method::POST, &path)
                .json(&request)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 422, "{request}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{request}: {body}");
        assert_eq!(body["errors"][0]["code"], code, "{request}: {body}");
    }
    let other = app.new_key("tenant-b").await;
    let response = app
        .request_as(&other, Method::POST, &path)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (404, "avatar_not_found")
    );
    assert!(
        app.sim.as_ref().unwrap().requests().is_empty(),
        "nothing reached fal"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn one_training_at_a_time_and_idempotent_retries(pool: PgPool) {
    let mut options = FalOptions::default();
    options.sim.time_factor = 1.0; // keep the first training running
    let (app, avatar) = trained_app(pool, options).await;
    let path = format!("/avatars/{avatar}/train");

    let first = app
        .request(Method::POST, &path)
        .header("idempotency-key", "k-1")
        .json(&json!({"preset": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let location = first.headers()["location"].to_str().unwrap().to_string();
    let first: Value = first.json().await.unwrap();

    // Same key, same body: the first answer again, and no second training.
    let replay = app
        .request(Method::POST, &path)
        .header("idempotency-key", "k-1")
        .json(&json!({"preset": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["location"], location.as_str());
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed["id"], first["id"]);

    // Same key, another body: refused.
    let (status, body) = problem(
        app.request(Method::POST, &path)
            .header("idempotency-key", "k-1")
            .json(&json!({"preset": "quality"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (422, "idempotency_key_mismatch")
    );

    // Another key while the first training runs: 409.
    let (status, body) = problem(
        app.request(Method::POST, &path)
            .header("idempotency-key", "k-2")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (409, "training_in_progress")
    );
    // ...and that refusal is itself replayed for k-2.
    let (status, body) = problem(
        app.request(Method::POST, &path)
            .header("idempotency-key", "k-2")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (409, "training_in_progress")
    );

    let listed: Value = app.get_json(&format!("/avatars/{avatar}/trainings")).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // Cross-tenant: the training is invisible.
    let other = app.new_key("tenant-b").await;
    let response = app
        .request_as(&other, Method::GET, &location)
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (404, "training_not_found")
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn concurrent_duplicates_of_an_idempotent_request_create_one_training(pool: PgPool) {
    let (app, avatar) = trained_app(pool.clone(), FalOptions::default()).await;
    let path = format!("/avatars/{avatar}/train");
    let requests = (0..8).map(|_| {
        app.request(Method::POST, &path)
            .header("idempotency-key", "same")
            .json(&json!({}))
            .send()
    });
    let responses = futures_util::future::join_all(requests).await;
    let statuses: Vec<u16> = responses
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&202));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn duplicate_webhooks_change_nothing(pool: PgPool) {
    let (app, avatar) = trained_app(pool.clone(), FalOptions::default()).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            webhook: WebhookFaults {
                duplicates: 2,
                ..WebhookFaults::default()
            },
            ..RequestFaults::default()
        },
    );
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap();
    let done = app
        .wait_for_training(id, "trained", |t| t["model"].is_object())
        .await;
    let request_id = done["fal_request_id"].as_str().unwrap().to_string();
    let sim = app.sim.as_ref().unwrap();
    sim.wait_until(DEADLINE, "three deliveries", |s| {
        s.request(&request_id)
            .is_some_and(|r| r.webhook.attempts.len() >= 3)
    })
    .await
    .unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events WHERE job_id = $1::uuid AND event = 'fal_succeeded' AND applied")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, 1);
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(inbox, 1, "identical redeliveries are one inbox row");
    let models: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(models, 1);
}

/// Posts a webhook signed by the simulator's key, as fal would.
async fn post_signed(
    app: &TestApp,
    query: &str,
    request_id: &str,
    body: &[u8],
    timestamp: i64,
) -> reqwest::Response {
    let sim = app.sim.as_ref().unwrap();
    let mut request = app
        .client
        .post(app.url(&format!("/webhooks/fal{query}")))
        .body(body.to_vec());
    for (name, value) in sim.webhook_headers(request_id, "sim-user", timestamp, body) {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn fifty_identical_deliveries_at_once_make_one_transition(pool: PgPool) {
    let mut options = FalOptions::default();
    options.sim.time_factor = 1.0;
    let (app, avatar) = trained_app(pool.clone(), options).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            webhook: WebhookFaults {
                drop: true,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap().to_string();
    let submitted = app
        .wait_for_training(&id, "submitted", |t| t["fal_request_id"].is_string())
        .await;
    let request_id = submitted["fal_request_id"].as_str().unwrap().to_string();

    // A finished LoRA result, as fal would post it (files on the simulator's CDN).
    let cdn = sim.cdn_url();
    let body = json!({
        "request_id": request_id, "gateway_request_id": request_id, "status": "OK",
        "payload": {"diffusers_lora_file": {"url": format!("{cdn}/missing.safetensors")}, "config_file": null},
        "error": null, "payload_error": null
    })
    .to_string();
    let sends = (0..50).map(|_| post_signed(&app, "", &request_id, body.as_bytes(), now()));
    let responses = futures_util::future::join_all(sends).await;
    let mut outcomes = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        let ack: Value = response.json().await.unwrap();
        outcomes.push(ack["outcome"].as_str().unwrap().to_string());
    }
    assert_eq!(
        outcomes.iter().filter(|o| *o == "applied").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(outcomes.iter().filter(|o| *o == "duplicate").count(), 49);
    let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    // fal succeeded; its LoRA file is missing, so the job is still finishing (custody).
    assert_eq!(status, "finishing");
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = $1::uuid AND to_status = 'finishing'",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(applied, 1);

    // A late ERROR for the same request: recorded, ignored, the job stays succeeded.
    let late = json!({"request_id": request_id, "status": "ERROR", "payload": null, "error": "late failure"}).to_string();
    let response = post_signed(&app, "", &request_id, late.as_bytes(), now()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["outcome"],
        "ignored"
    );
    // fal's success stands, but the LoRA file is missing, so custody is still trying: callers
    // read the training as in progress, as its avatar (still training) says.
    let read = training(&app, &id).await;
    assert_eq!(read["status"], "in_progress", "{read:#}");
    assert_eq!(read["progress"], 1.0);
    let avatar: Value = app
        .request(Method::GET, &format!("/avatars/{avatar}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(avatar["status"], "training");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn webhook_signatures_and_timestamps_are_checked(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let body = br#"{"request_id":"r-1","status":"OK","payload":{}}"#;
    for (offset, expected) in [(-299, 200), (299, 200), (-301, 401), (301, 401)] {
        let response = post_signed(&app, "", "r-1", body, now() + offset).await;
        assert_eq!(response.status(), expected, "offset {offset}");
    }
    // Tampered body, missing header, garbage signature.
    let sim = app.sim.as_ref().unwrap();
    let headers = sim.webhook_headers("r-2", "u", now(), body);
    let mut tampered = app
        .client
        .post(app.url("/webhooks/fal"))
        .body(br#"{"request_id":"r-2","status":"OK","payload":{"x":1}}"#.to_vec());
    for (name, value) in &headers {
        tampered = tampered.header(name, value);
    }
    let (status, problem_body) = problem(tampered.send().await.unwrap()).await;
    assert_eq!(
        (status, problem_body["code"].as_str().unwrap()),
        (401, "invalid_signature")
    );
    let mut missing = app
        .client
        .post(app.url("/webhooks/fal"))
        .body(body.to_vec());
    for (name, value) in headers
        .iter()
        .filter(|(n, _)| n != "x-fal-webhook-signature")
    {
        missing = missing.header(name, value);
    }
    assert_eq!(missing.send().await.unwrap().status(), 401);
    // Over 1 MiB.
    let big = vec![b' '; 1024 * 1024 + 10];
    let response = post_signed(&app, "", "r-3", &big, now()).await;
    let (status, _) = problem(response).await;
    assert_eq!(status, 413);
    // The unknown request of the accepted deliveries is kept for reconciliation.
    let ack = post_signed(
        &app,
        "",
        "r-9",
        br#"{"request_id":"r-9","status":"OK","payload":{}}"#,
        now(),
    )
    .await;
    assert_eq!(
        ack.json::<Value>().await.unwrap()["outcome"],
        "unknown_request"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_webhook_signed_with_a_wrong_key_is_refused_and_fal_retries(pool: PgPool) {
    let mut options = FalOptions::default();
    options.sim.webhook_retry_delays = vec![Duration::from_millis(1); 3];
    let (app, avatar) = trained_app(pool, options).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            webhook: WebhookFaults {
                signature: SignatureFault::WrongKey,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap();
    let submitted = app
        .wait_for_training(id, "submitted", |t| t["fal_request_id"].is_string())
        .await;
    let request_id = submitted["fal_request_id"].as_str().unwrap().to_string();
    let report = sim.wait_for_webhook(&request_id, DEADLINE).await.unwrap();
    assert!(
        report
            .webhook
            .attempts
            .iter()
            .all(|a| a.status == Some(401)),
        "{:?}",
        report.webhook
    );
    assert_ne!(
        training(&app, id).await["status"],
        "succeeded",
        "a forged callback changes nothing"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn jwks_down_answers_503_then_fals_retry_succeeds(pool: PgPool) {
    let mut options = FalOptions::default();
    options.sim.webhook_retry_delays = vec![Duration::from_millis(300); 5];
    options.sim.time_factor = 0.0002;
    let (app, avatar) = trained_app(pool, options).await;
    let sim = app.sim.as_ref().unwrap();
    sim.set_jwks_down(true);
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap().to_string();
    let submitted = app
        .wait_for_training(&id, "submitted", |t| t["fal_request_id"].is_string())
        .await;
    let request_id = submitted["fal_request_id"].as_str().unwrap().to_string();
    sim.wait_until(DEADLINE, "a refused delivery", |s| {
        s.request(&request_id)
            .is_some_and(|r| !r.webhook.attempts.is_empty())
    })
    .await
    .unwrap();
    let first = sim.request(&request_id).unwrap().webhook.attempts[0].status;
    assert_eq!(first, Some(503));
    sim.set_jwks_down(false);
    let done = app
        .wait_for_training(&id, "trained", |t| t["model"].is_object())
        .await;
    assert_eq!(done["status"], "succeeded");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_pretty_printed_escaped_body_verifies(pool: PgPool) {
    let (app, avatar) = trained_app(pool, FalOptions::default()).await;
    app.sim.as_ref().unwrap().fault_next_requests(
        1,
        None,
        RequestFaults {
            webhook: WebhookFaults {
                pretty_escaped_body: true,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let started = app.start_training(&avatar, json!({})).await;
    let done = app
        .wait_for_training(started["id"].as_str().unwrap(), "trained", |t| {
            t["model"].is_object()
        })
        .await;
    assert_eq!(done["status"], "succeeded");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_null_payload_is_fetched_from_fal(pool: PgPool) {
    let (app, avatar) = trained_app(pool, FalOptions::default()).await;
    app.sim.as_ref().unwrap().fault_next_requests(
        1,
        None,
        RequestFaults {
            webhook: WebhookFaults {
                null_payload: true,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let started = app.start_training(&avatar, json!({})).await;
    let done = app
        .wait_for_training(started["id"].as_str().unwrap(), "trained", |t| {
            t["model"].is_object()
        })
        .await;
    assert!(done["model"]["artifact_sha256"].is_string());
    let sim = app.sim.as_ref().unwrap();
    let results = sim
        .received_requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(done["fal_request_id"].as_str().unwrap()))
        .count();
    assert_eq!(results, 1, "the result was fetched once");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_dropped_webhook_is_recovered_by_the_reconciler(pool: PgPool) {
    let options = FalOptions {
        status_check_interval: Duration::from_millis(200),
        ..FalOptions::default()
    };
    let app = TestApp::spawn_with_fal_and(pool, options, |settings| {
        settings.jobs.webhook_grace = Duration::ZERO;
    })
    .await;
    let avatar = app.avatar_with_photos(10).await;
    app.sim.as_ref().unwrap().fault_next_requests(
        1,
        None,
        RequestFaults {
            webhook: WebhookFaults {
                drop: true,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    // 5 steps: expected 1.8 s, so looked up 1.8 s after submission.
    let started = app
        .start_training(&avatar, json!({"overrides": {"steps": 5}}))
        .await;
    let done = app
        .wait_for_training(started["id"].as_str().unwrap(), "trained", |t| {
            t["model"].is_object()
        })
        .await;
    assert_eq!(done["status"], "succeeded");
    let report = app
        .sim
        .as_ref()
        .unwrap()
        .request(done["fal_request_id"].as_str().unwrap())
        .unwrap();
    assert!(matches!(
        report.webhook.outcome,
        fal_sim::WebhookOutcome::Dropped
    ));
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn submits_retry_only_where_fal_certainly_did_not_accept(pool: PgPool) {
    let (app, avatar) = trained_app(pool.clone(), FalOptions::default()).await;
    let sim = app.sim.as_ref().unwrap();
    let unavailable = SubmitFault::Respond {
        status: 503,
        body: None,
        error_type: None,
        retry_after_secs: Some(0),
        with_request_id: false,
        user_timeout: false,
    };
    sim.fail_next_submits(2, unavailable);
    let started = app.start_training(&avatar, json!({})).await;
    let done = app
        .wait_for_training(started["id"].as_str().unwrap(), "trained", |t| {
            t["model"].is_object()
        })
        .await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(sim.requests().len(), 1, "exactly one fal request");
    let submits = sim
        .received_requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("flux-lora-portrait-trainer"))
        .count();
    assert_eq!(submits, 3);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_422_from_fal_fails_the_training_without_retry(pool: PgPool) {
    let (app, avatar) = trained_app(pool.clone(), FalOptions::default()).await;
    let sim = app.sim.as_ref().unwrap();
    let invalid = SubmitFault::Respond {
        status: 422,
        body: Some(
            json!({"detail": [{"loc": ["body", "steps"], "msg": "too many", "type": "value_error"}]}),
        ),
        error_type: None,
        retry_after_secs: None,
        with_request_id: false,
        user_timeout: false,
    };
    sim.fail_next_submits(1, invalid);
    let started = app.start_training(&avatar, json!({})).await;
    let done = app
        .wait_for_training(started["id"].as_str().unwrap(), "failed", |t| {
            t["status"] == "failed"
        })
        .await;
    assert_eq!(done["error"]["code"], "fal_rejected_input");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too many"),
        "{done}"
    );
    let submits = sim
        .received_requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("trainer"))
        .count();
    assert_eq!(submits, 1);
    let avatar_now: Value = app.get_json(&format!("/avatars/{avatar}")).await;
    assert_eq!(avatar_now["status"], "failed");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_rejected_key_and_a_locked_account_have_their_codes(pool: PgPool) {
    for (kind, code) in [
        (None, "fal_unauthorized"),
        (Some(KeyKind::BillingLocked), "fal_billing_locked"),
    ] {
        let db = format!("train_keys_{}", code);
        let _ = db;
        let options = FalOptions {
            key: Some(format!("key-{code}:secret")),
            ..FalOptions::default()
        };
        let app = TestApp::spawn_with_fal(pool.clone(), options).await;
        if let Some(kind) = kind {
            app.sim
                .as_ref()
                .unwrap()
                .register_key(&format!("key-{code}:secret"), kind);
        }
        let avatar = app.avatar_with_photos(10).await;
        let started = app.start_training(&avatar, json!({})).await;
        let done = app
            .wait_for_training(started["id"].as_str().unwrap(), "failed", |t| {
                t["status"] == "failed"
            })
            .await;
        assert_eq!(done["error"]["code"], code);
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        if code == "fal_unauthorized" {
            let (status, body) = problem(ready).await;
            assert_eq!(status, 503);
            assert!(
                body["reasons"].to_string().contains("fal_unauthorized"),
                "{body}"
            );
        } else {
            assert_eq!(ready.status(), 200);
        }
        let secret_free = training(&app, started["id"].as_str().unwrap())
            .await
            .to_string();
        assert!(
            !secret_free.contains("secret"),
            "the key never appears: {secret_free}"
        );
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_unknown_submit_outcome_is_never_resubmitted_and_resolves_by_webhook(pool: PgPool) {
    let (app, avatar) = trained_app(pool, FalOptions::default()).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fail_next_submits(1, SubmitFault::CloseConnection { enqueue: true });
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap();
    let done = app
        .wait_for_training(id, "trained", |t| t["model"].is_object())
        .await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(sim.requests().len(), 1, "one fal request: no second submit");
    let submits = sim
        .received_requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("trainer"))
        .count();
    assert_eq!(submits, 1);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_training_past_its_deadline_is_cancelled_on_fal_and_timed_out(pool: PgPool) {
    let options = FalOptions {
        training_timeout: Duration::from_secs(2),
        status_check_interval: Duration::from_millis(200),
        ..FalOptions::default()
    };
    let (app, avatar) = trained_app(pool, options).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    // 5 steps are expected to take 1.8 s: within the 2 s timeout, which caps the deadline.
    let started = app
        .start_training(&avatar, json!({"overrides": {"steps": 5}}))
        .await;
    let done = app
        .wait_for_training(started["id"].as_str().unwrap(), "timed out", |t| {
            t["status"] == "timed_out"
        })
        .await;
    assert_eq!(done["error"]["code"], "training_timeout");
    let report = sim
        .request(done["fal_request_id"].as_str().unwrap())
        .unwrap();
    assert!(report.cancel_requested, "cancelled on fal");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_queued_training_is_cancelled_on_fal(pool: PgPool) {
    let (app, avatar) = trained_app(pool, FalOptions::default()).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap();
    let submitted = app
        .wait_for_training(id, "submitted", |t| t["status"] == "submitted")
        .await;
    let response = app
        .request(Method::POST, &format!("/trainings/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(
        sim.request(submitted["fal_request_id"].as_str().unwrap())
            .unwrap()
            .cancel_requested
    );
    let avatar_now: Value = app.get_json(&format!("/avatars/{avatar}")).await;
    assert_eq!(avatar_now["status"], "cancelled");
    let (status, body) = problem(
        app.request(Method::POST, &format!("/trainings/{id}/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (409, "training_finished")
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_running_training_is_cancelled_on_fal(pool: PgPool) {
    let mut options = FalOptions {
        status_check_interval: Duration::from_millis(100),
        ..FalOptions::default()
    };
    options.sim.time_factor = 1.0;
    let (app, avatar) = trained_app(pool, options).await;
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap();
    let running = app
        .wait_for_training(id, "in progress", |t| t["status"] == "in_progress")
        .await;
    let response = app
        .request(Method::POST, &format!("/trainings/{id}/cancel"))
        .send()
        .await
        .unwrap();
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(
        app.sim
            .as_ref()
            .unwrap()
            .request(running["fal_request_id"].as_str().unwrap())
            .unwrap()
            .cancel_requested
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_service_restarted_mid_training_finishes_the_job(pool: PgPool) {
    let mut options = FalOptions {
        status_check_interval: Duration::from_millis(200),
        ..FalOptions::default()
    };
    options.sim.webhook_retry_delays = vec![Duration::from_millis(1); 2];
    let (app, avatar) = trained_app(pool, options).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap().to_string();
    let submitted = app
        .wait_for_training(&id, "submitted", |t| t["status"] == "submitted")
        .await;
    let request_id = submitted["fal_request_id"].as_str().unwrap().to_string();

    let app = app.restart().await;
    app.sim.as_ref().unwrap().release(&request_id);
    let done = app
        .wait_for_training(&id, "trained", |t| t["model"].is_object())
        .await;
    assert_eq!(done["status"], "succeeded");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn deleting_an_avatar_cancels_its_training_on_fal(pool: PgPool) {
    let (app, avatar) = trained_app(pool, FalOptions::default()).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap();
    let submitted = app
        .wait_for_training(id, "submitted", |t| t["status"] == "submitted")
        .await;
    let response = app
        .request(Method::DELETE, &format!("/avatars/{avatar}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(
        sim.request(submitted["fal_request_id"].as_str().unwrap())
            .unwrap()
            .cancel_requested
    );
    assert_eq!(training(&app, id).await["status"], "cancelled");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn presets_list_every_trainer_with_costs(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let presets: Value = app.get_json("/presets").await;
    let training = presets["training"].as_array().unwrap();
    assert_eq!(training.len(), 9);
    let find = |trainer: &str, preset: &str| {
        training
            .iter()
            .find(|p| p["trainer"] == trainer && p["preset"] == preset)
            .unwrap()
            .clone()
    };
    assert_eq!(find("portrait", "quality")["estimated_cost_usd"], 6.0);
    assert_eq!(
        find("portrait", "fast")["estimated_cost_usd"],
        2.4,
        "1,000-step minimum billed"
    );
    assert_eq!(find("fast_lora", "balanced")["estimated_cost_usd"], 2.0);
    assert_eq!(find("pro", "balanced")["estimated_cost_usd"], Value::Null);
    assert!(find("pro", "fast")["deprecation"].is_string());
    assert_eq!(
        find("portrait", "balanced")["parameters"]["create_masks"],
        true
    );
    let generation = presets["generation"].as_array().unwrap();
    assert_eq!(generation.len(), 5);
    assert!(generation
        .iter()
        .any(|p| p["preset"] == "portrait" && p["image_size"] == "portrait_4_3"));
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_fal_failure_after_acceptance_fails_the_training(pool: PgPool) {
    let (app, avatar) = trained_app(pool, FalOptions::default()).await;
    app.sim.as_ref().unwrap().fault_next_requests(
        1,
        None,
        RequestFaults {
            fail: Some(FailSpec {
                status: 500,
                error: "runner crashed".into(),
                error_type: "runner_disconnected".into(),
                body: None,
            }),
            ..Default::default()
        },
    );
    let started = app.start_training(&avatar, json!({})).await;
    let done = app
        .wait_for_training(started["id"].as_str().unwrap(), "failed", |t| {
            t["status"] == "failed"
        })
        .await;
    assert_eq!(done["error"]["code"], "fal_failed");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("runner crashed"),
        "{done}"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_webhook_arriving_before_the_request_id_was_stored_completes_the_job(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool.clone(), FalOptions::default()).await;
    let avatar = app
        .create_avatar(json!({"name": "early", "kind": "style"}))
        .await;
    // A job whose worker sent the submit but has not yet recorded fal's answer.
    let params = domain::training_preset(
        domain::Trainer::Pro,
        domain::PresetName::Balanced,
        &Default::default(),
    )
    .params
    .to_json();
    let job_id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, avatar_id, kind, status, trainer, endpoint, preset, params,
             trigger_phrase, lease_owner, lease_until, fence, submit_started_at)
         SELECT $1, tenant_id, id, 'training', 'uploading', 'pro', 'fal-ai/flux-pro-trainer', 'balanced', $2,
             trigger_phrase, gen_random_uuid(), now() + interval '10 minutes', 1, now()
         FROM avatars WHERE id = $3::uuid",
    )
    .bind(job_id)
    .bind(Value::Object(params))
    .bind(avatar["id"].as_str().unwrap())
    .execute(&pool)
    .await
    .unwrap();

    let body =
        json!({"request_id": "req-early", "status": "OK", "payload": {"finetune_id": "ft-early"}})
            .to_string();
    // A wrong token does not correlate; the unknown request is only kept.
    let response = post_signed(
        &app,
        &format!("?job={job_id}&token=wrong"),
        "req-early",
        body.as_bytes(),
        now(),
    )
    .await;
    assert_eq!(
        response.json::<Value>().await.unwrap()["outcome"],
        "unknown_request"
    );
    let body = json!({"request_id": "req-early", "status": "OK", "payload": {"finetune_id": "ft-early"}, "error": null}).to_string();
    // The job's token is derived from its id under the service's keys.
    let token = app.running().settings.secrets.job_token(job_id);
    let response = post_signed(
        &app,
        &format!("?job={job_id}&token={}", token.expose_secret()),
        "req-early",
        body.as_bytes(),
        now(),
    )
    .await;
    assert_eq!(
        response.json::<Value>().await.unwrap()["outcome"],
        "applied"
    );
    let done = app
        .wait_for_training(&job_id.to_string(), "trained", |t| t["model"].is_object())
        .await;
    assert_eq!(done["fal_request_id"], "req-early");
    assert_eq!(done["model"]["finetune_id"], "ft-early");
    let path: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT from_status, to_status FROM job_events WHERE job_id = $1 AND applied ORDER BY id",
    )
    .bind(job_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        path,
        [
            (Some("uploading".into()), Some("submitted".into())),
            (Some("submitted".into()), Some("succeeded".into()))
        ]
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_job_row_with_an_unknown_status_or_kind_fails_loudly_when_read(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let avatar = app
        .create_avatar(json!({"name": "corrupt", "kind": "character"}))
        .await;
    // Rows the schema would refuse: written as by a newer version, or by hand.
    sqlx::query(
        "ALTER TABLE jobs DROP CONSTRAINT jobs_status_check, DROP CONSTRAINT jobs_kind_check",
    )
    .execute(&pool)
    .await
    .unwrap();
    let insert = |kind: &'static str, status: &'static str| {
        let pool = pool.clone();
        let avatar = avatar["id"].as_str().unwrap().to_string();
        async move {
            let id = uuid::Uuid::now_v7();
            sqlx::query(
                "INSERT INTO jobs (id, tenant_id, avatar_id, kind, status, trainer, endpoint, preset,
                     params, trigger_phrase)
                 SELECT $1, tenant_id, id, $2, $3, 'portrait', 'fal-ai/flux-lora-portrait-trainer',
                     'balanced', '{}', trigger_phrase
                 FROM avatars WHERE id = $4::uuid",
            )
            .bind(id)
            .bind(kind)
            .bind(status)
            .bind(avatar)
            .execute(&pool)
            .await
            .unwrap();
            id
        }
    };
    let bad_status = insert("training", "exploded").await;
    let bad_kind = insert("mystery", "failed").await;

    for (id, column, value) in [
        (bad_status, "status", "exploded"),
        (bad_kind, "kind", "mystery"),
    ] {
        match app.store.job_by_id(id).await {
            Err(store::StoreError::CorruptRow {
                table,
                column: got_column,
                value: got_value,
            }) => {
                assert_eq!(table, "jobs");
                assert_eq!(got_column, column);
                assert_eq!(got_value, value);
            }
            other => panic!("reading a job with {column} {value:?} gave {other:?}"),
        }
        // Never read as some default (a failed training, say): the caller sees an error.
        let response = app
            .request(Method::GET, &format!("/trainings/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 500, "{column} {value:?}");
    }
}

/// fal finished the training, but its LoRA weights expired before the service copied them:
/// custody tries `CUSTODY_MAX_ATTEMPTS` times, then the training fails `artifact_unavailable`,
/// the avatar is released and `training.failed` is emitted. No read ever shows a succeeded
/// training beside an avatar still training.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_lora_that_cannot_be_kept_fails_the_training_and_releases_the_avatar(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool.clone(), FalOptions::default(), |settings| {
        settings.jobs.custody_max_attempts = 3;
        settings.jobs.custody_retry_interval = Duration::from_secs(2);
    })
    .await;
    let sim = app.sim.as_ref().unwrap();
    app.hold_next_callback();
    let avatar = app.avatar_with_photos(10).await;
    let mut events = app.request(Method::GET, "/events").send().await.unwrap();
    assert_eq!(events.status(), 200);
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap().to_string();
    let lora = app.expire_lora_then_release_callback().await;

    let seen_in_progress_at_full_progress = std::cell::Cell::new(false);
    let failed = app
        .eventually("custody gives up", || {
            let (app, id, avatar) = (&app, &id, &avatar);
            let (seen, pool) = (&seen_in_progress_at_full_progress, &pool);
            async move {
                let avatar_id = avatar;
                // The avatar first: a training still in progress after it was read was in
                // progress when it was read, so the avatar must have said `training`.
                let avatar: Value = app.get_json(&format!("/avatars/{avatar_id}")).await;
                let training = training(app, id).await;
                // Read after the GET: the row can only have moved on since.
                let stored: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
                    .bind(uuid::Uuid::parse_str(id).unwrap())
                    .fetch_one(pool)
                    .await
                    .unwrap();
                // Not even the stored row calls it a success while the LoRA is not kept.
                assert_ne!(stored, "succeeded");
                assert_ne!(training["status"], "succeeded", "{training:#}");
                if training["status"] == "in_progress" {
                    assert_eq!(avatar["status"], "training");
                    if training["progress"] == 1.0 && stored == "finishing" {
                        seen.set(true);
                    }
                }
                if training["status"] == "failed" {
                    // Read again: the avatar above may predate the failure.
                    let avatar: Value = app.get_json(&format!("/avatars/{avatar_id}")).await;
                    Ok((training, avatar))
                } else {
                    Err(format!("{training:#}"))
                }
            }
        })
        .await;
    let (training, avatar_now) = failed;
    assert!(
        seen_in_progress_at_full_progress.get(),
        "fal's success awaiting custody shows as in progress"
    );
    assert_eq!(training["error"]["code"], "artifact_unavailable");
    assert_eq!(training["model"], Value::Null);
    assert_eq!(avatar_now["status"], "failed");
    let lora_path = lora.split("/files/").nth(1).unwrap().to_string();
    let downloads = sim
        .received_requests()
        .iter()
        .filter(|r| r.path.ends_with(&lora_path))
        .count();
    assert_eq!(downloads, 3, "exactly CUSTODY_MAX_ATTEMPTS downloads");

    // The event reached the stream.
    let mut text = String::new();
    let until = tokio::time::Instant::now() + DEADLINE;
    while !text.contains("event: training.failed") {
        match tokio::time::timeout_at(until, events.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no training.failed event: {other:?}\n{text}"),
        }
    }
    assert!(text.contains("artifact_unavailable"), "{text}");

    // The avatar can train again.
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/train"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// A paid POST whose request runs longer than its key's lease keeps the key: it renews the
/// lease while it runs, so a retry meanwhile is told the key is in use instead of paying again;
/// once it answered, the retry replays that answer.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_idempotency_key_is_not_taken_over_while_its_request_runs(pool: PgPool) {
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    let archive = {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for i in 0..10 {
            writer
                .start_file(
                    format!("img{i}.jpg"),
                    zip::write::SimpleFileOptions::default(),
                )
                .unwrap();
            std::io::Write::write_all(&mut writer, &blackbox::images::portrait(i)).unwrap();
        }
        writer.finish().unwrap().into_inner()
    };
    // The caller's archive is served only when the test says so.
    let (arrived, release) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/photos.zip",
        axum::routing::get({
            let (arrived, release) = (arrived.clone(), release.clone());
            move || async move {
                arrived.add_permits(1);
                release.acquire().await.unwrap().forget();
                archive.clone()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let app = TestApp::spawn_with_fal_and(pool.clone(), FalOptions::default(), |settings| {
        settings.fetch.allow_http = true;
        settings.fetch.allowed_private = vec![addr];
        settings.http.idempotency_lease = Duration::from_secs(1);
    })
    .await;
    let avatar = app.avatar_with_photos(10).await;
    let path = format!("/avatars/{avatar}/train");
    let body = json!({"images_data_url": format!("http://{addr}/photos.zip")});
    let post = || {
        app.request(Method::POST, &path)
            .header("idempotency-key", "slow")
            .json(&body)
            .send()
    };
    let first = tokio::spawn(post());
    tokio::time::timeout(DEADLINE, arrived.acquire())
        .await
        .expect("the archive is fetched")
        .unwrap()
        .forget();
    app.eventually("the request outlived its first lease", || async {
        let renewed: bool = sqlx::query_scalar(
            "SELECT lease_until > created_at + interval '2 seconds' FROM idempotency_keys",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        renewed.then_some(()).ok_or_else(|| "not yet".to_string())
    })
    .await;
    let (status, body) = problem(post().await.unwrap()).await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "idempotency_key_in_use");

    release.add_permits(1);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 202);
    let created: Value = first.json().await.unwrap();
    let replay = post().await.unwrap();
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed["id"], created["id"]);
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
}

/// A request that created its training and then stopped before answering (its process died,
/// its client went away) left its key in flight, bound to the training: once the key's lease
/// ran out, a retry answers with that training instead of paying for a second one. A request
/// that died before creating anything leaves its key free a lease later.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_key_whose_request_died_answers_with_what_it_created(pool: PgPool) {
    let (app, avatar) = trained_app(pool.clone(), FalOptions::default()).await;
    let path = format!("/avatars/{avatar}/train");
    let created = app.start_training(&avatar, json!({})).await;
    let training_id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let tenant = app.store.find_tenant_by_name("tenant-a").await.unwrap().id;
    let hash = sha256_hex(format!("POST {path}\n{{}}").as_bytes());
    let leave_in_flight = |key: &'static str, lease: &'static str, resource: Option<uuid::Uuid>| {
        let pool = pool.clone();
        let hash = hash.clone();
        async move {
            sqlx::query(&format!(
                "INSERT INTO idempotency_keys (tenant_id, key, request_hash, state, claim_token,
                     lease_until, resource_kind, resource_id)
                 VALUES ($1, $2, $3, 'in_flight', gen_random_uuid(), now() + interval '{lease}',
                     CASE WHEN $4::uuid IS NULL THEN NULL ELSE 'training' END, $4)"
            ))
            .bind(tenant.0)
            .bind(key)
            .bind(&hash)
            .bind(resource)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let post = |key: &'static str| {
        app.request(Method::POST, &path)
            .header("idempotency-key", key)
            .json(&json!({}))
            .send()
    };

    // Its request may still be running: in use.
    leave_in_flight("alive", "1 minute", Some(training_id)).await;
    let (status, body) = problem(post("alive").await.unwrap()).await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "idempotency_key_in_use");

    // Its request died after committing the training: the training, not a second one.
    leave_in_flight("died-after", "-1 second", Some(training_id)).await;
    for _ in 0..2 {
        let response = post("died-after").await.unwrap();
        assert_eq!(response.status(), 202);
        assert_eq!(response.headers()["idempotent-replayed"], "true");
        assert_eq!(
            response.headers()["location"],
            format!("/trainings/{training_id}").as_str()
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["id"], training_id.to_string());
    }
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);

    // Its request died before creating anything: the key is free, and this request does the
    // work (here refused, as the avatar's training runs: the refusal is the key's answer).
    leave_in_flight("died-before", "-1 second", None).await;
    let (status, body) = problem(post("died-before").await.unwrap()).await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "training_in_progress");
}
