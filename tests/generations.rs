use std::time::Duration;

use blackbox::{problem, FalOptions, TestApp};
use fal_sim::{FailSpec, RequestFaults, WebhookFaults};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(60);

async fn get(app: &TestApp, path: &str) -> Value {
    let response = app.request(Method::GET, path).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// Waits until the generation satisfies `done`.
async fn wait_generation(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    app.wait_for_json(
        &format!("/generations/{id}"),
        "the awaited generation state",
        done,
    )
    .await
}

fn finished(generation: &Value) -> bool {
    ["succeeded", "failed", "partially_succeeded"].contains(&generation["status"].as_str().unwrap())
}

async fn generate(app: &TestApp, avatar: &str, body: Value) -> Value {
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/generations"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let location = response.headers().get("location").cloned();
    let json: Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{json:#}");
    assert_eq!(
        location.unwrap().to_str().unwrap(),
        format!("/generations/{}", json["id"].as_str().unwrap())
    );
    json
}

async fn generate_and_wait(app: &TestApp, avatar: &str, body: Value) -> Value {
    let started = generate(app, avatar, body).await;
    wait_generation(app, started["id"].as_str().unwrap(), finished).await
}

/// An app with an avatar trained through the real pipeline: a portrait LoRA for `character`,
/// a Pro finetune for `style`. Returns the avatar JSON.
async fn trained(app: &TestApp, kind: &str) -> Value {
    let avatar = app
        .create_avatar(json!({"name": "trained", "kind": kind}))
        .await;
    let id = avatar["id"].as_str().unwrap();
    let files = blackbox::images::portrait_set(10);
    assert_eq!(app.upload(id, files).await.status(), 201);
    let response = app
        .request(Method::POST, &format!("/avatars/{id}/train"))
        .json(&json!({"preset": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    app.wait_for_json(&format!("/avatars/{id}"), "trained", |avatar| {
        avatar["status"] == "trained"
    })
    .await
}

/// The fal requests the simulator received for an endpoint, oldest first.
fn sim_requests(app: &TestApp, endpoint: &str) -> Vec<fal_sim::RequestReport> {
    let mut reports: Vec<_> = app
        .sim
        .as_ref()
        .unwrap()
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == endpoint)
        .collect();
    reports.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    reports
}

fn sim_request(app: &TestApp, request_id: &Value) -> fal_sim::RequestReport {
    app.sim
        .as_ref()
        .unwrap()
        .request(request_id.as_str().unwrap())
        .unwrap()
}

/// Fetches a served image and checks its type and real dimensions.
async fn check_image(app: &TestApp, image: &Value, content_type: &str, size: (u32, u32)) {
    assert_eq!(image["content_type"], content_type);
    assert_eq!(image["width"], size.0);
    assert_eq!(image["height"], size.1);
    let response = app
        .request(Method::GET, image["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        content_type
    );
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, image["bytes"].as_u64().unwrap());
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), size);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_lora_generation_stores_and_serves_its_images(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = trained(&app, "character").await;
    let id = avatar["id"].as_str().unwrap();
    let trigger = avatar["trigger_phrase"].as_str().unwrap();

    let started = generate(
        &app,
        id,
        json!({"prompt": "on a beach at sunset", "aspect_ratio": "3:4", "seed": 42}),
    )
    .await;
    // The submitter may already hold it.
    assert!(["pending", "in_progress"].contains(&started["status"].as_str().unwrap()));
    assert_eq!(started["model_type"], "lora");
    assert_eq!(started["endpoint"], "fal-ai/flux-lora");
    assert_eq!(started["preset"], "balanced");
    // 768 x 1024 bills as one megapixel.
    assert_eq!(started["estimated_cost_usd"], 0.035);
    let done = wait_generation(&app, started["id"].as_str().unwrap(), finished).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let item = &done["items"][0];
    assert_eq!(item["prompt"], format!("{trigger} on a beach at sunset"));
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["images"].as_array().unwrap().len(), 1);
    let image = &item["images"][0];
    assert_eq!(image["seed"], 42);
    assert_eq!(image["nsfw"], false);
    check_image(&app, image, "image/jpeg", (768, 1024)).await;

    // fal got the balanced preset and the avatar's LoRA, at its scale.
    let input = sim_request(&app, &item["fal_request_id"]).input;
    assert_eq!(input["prompt"], format!("{trigger} on a beach at sunset"));
    assert_eq!(input["image_size"], "portrait_4_3");
    assert_eq!(input["num_inference_steps"], 28);
    assert_eq!(input["guidance_scale"], 3.5);
    assert_eq!(input["seed"], 42);
    assert_eq!(input["loras"][0]["scale"], 1.0);
    let training = &sim_requests(&app, "fal-ai/flux-lora-portrait-trainer")[0];
    assert_eq!(
        input["loras"][0]["path"],
        training.output.as_ref().unwrap()["diffusers_lora_file"]["url"]
    );

    // A prompt that already holds the trigger phrase is sent as it is; overrides apply.
    let own = format!("portrait of {} in the rain", trigger.to_uppercase());
    let done = generate_and_wait(
        &app,
        id,
        json!({"prompt": own, "preset": "fast", "lora_scale": 0.6, "output_format": "png", "width": 640, "height": 480}),
    )
    .await;
    let item = &done["items"][0];
    assert_eq!(item["prompt"], own);
    let input = sim_request(&app, &item["fal_request_id"]).input;
    assert_eq!(input["prompt"], own);
    assert_eq!(input["loras"][0]["scale"], 0.6);
    assert_eq!(input["num_inference_steps"], 20);
    assert_eq!(input["image_size"], json!({"width": 640, "height": 480}));
    check_image(&app, &item["images"][0], "image/png", (640, 480)).await;

    // Both are listed, newest first.
    let list = get(&app, &format!("/avatars/{id}/generations")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(list["items"][0]["id"], done["id"]);

    // Another tenant sees none of it.
    let other = app.new_key("other tenant").await;
    let generation = done["id"].as_str().unwrap();
    for path in [
        format!("/generations/{generation}"),
        format!("/generations/{generation}/images/0"),
        format!("/avatars/{id}/generations"),
    ] {
        let response = app
            .request_as(&other, Method::GET, &path)
            .send()
            .await
            .unwrap();
        let (status, _) = problem(response).await;
        assert_eq!(status, 404, "{path}");
    }
    let response = app
        .request_as(&other, Method::POST, &format!("/avatars/{id}/generations"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.1["code"], "avatar_not_found");
    let response = app
        .request(Method::GET, &format!("/generations/{generation}/images/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.1["code"], "image_not_found");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_finetuned_avatar_generates_through_ultra_finetuned(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = trained(&app, "style").await;
    let id = avatar["id"].as_str().unwrap();
    let finetune_id = avatar["trained_model"]["finetune_id"].as_str().unwrap();

    let started = generate(
        &app,
        id,
        json!({"prompt": "a poster", "aspect_ratio": "9:16", "preset": "quality", "output_format": "png", "safety_tolerance": "2"}),
    )
    .await;
    assert_eq!(started["model_type"], "finetune");
    assert_eq!(started["endpoint"], "fal-ai/flux-pro/v1.1-ultra-finetuned");
    assert_eq!(started["estimated_cost_usd"], 0.07);
    let done = wait_generation(&app, started["id"].as_str().unwrap(), finished).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let item = &done["items"][0];
    let input = sim_request(&app, &item["fal_request_id"]).input;
    assert_eq!(input["finetune_id"], finetune_id);
    assert_eq!(input["finetune_strength"], 1.2);
    assert_eq!(input["aspect_ratio"], "9:16");
    assert_eq!(input["safety_tolerance"], "2");
    assert!(input.get("loras").is_none());
    // The simulator renders ultra sizes scaled down by 16: 1536 x 2752 -> 96 x 172.
    check_image(&app, &item["images"][0], "image/png", (96, 172)).await;

    // The portrait preset keeps a finetune portrait; exact sizes are for LoRA avatars.
    let done = generate_and_wait(
        &app,
        id,
        json!({"prompt": "a poster", "preset": "portrait"}),
    )
    .await;
    let input = sim_request(&app, &done["items"][0]["fal_request_id"]).input;
    assert_eq!(input["aspect_ratio"], "3:4");
    assert_eq!(input["finetune_strength"], 1.0);
    let response = app
        .request(Method::POST, &format!("/avatars/{id}/generations"))
        .json(&json!({"prompt": "x", "width": 512, "height": 512}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "width");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_batch_of_three_prompts_is_one_generation(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool.clone(), FalOptions::default()).await;
    let avatar = trained(&app, "character").await;
    let id = avatar["id"].as_str().unwrap();
    let trigger = avatar["trigger_phrase"].as_str().unwrap();
    let prompts = ["in a forest", "in a city", "on the moon"];
    let started = generate(
        &app,
        id,
        json!({"prompts": prompts, "num_images": 2, "preset": "fast"}),
    )
    .await;
    // The answer shows the generation as the request created it: every item pending, in order.
    let items = started["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["prompt"], format!("{trigger} {}", prompts[i]));
        assert_eq!(item["status"], "pending", "{started:#}");
    }
    // Its queued event holds the same three items, and each item's history starts at `created`.
    let generation_id: uuid::Uuid = started["id"].as_str().unwrap().parse().unwrap();
    let (queued_items, created): (serde_json::Value, i64) = sqlx::query_as(
        "SELECT (SELECT data -> 'jobs' FROM outbox_events
                  WHERE job_id = $1 AND event_type = 'generation.queued'),
                (SELECT count(*) FROM job_events e JOIN jobs j ON j.id = e.job_id
                  WHERE j.generation_id = $1 AND e.event = 'created'
                    AND e.cause = 'generation requested')",
    )
    .bind(generation_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let queued_indexes: Vec<i64> = queued_items
        .as_array()
        .expect("the queued event lists the items")
        .iter()
        .map(|job| job["item_index"].as_i64().unwrap())
        .collect();
    assert_eq!(queued_indexes, [0, 1, 2]);
    assert_eq!(created, 3);
    // Three requests of 2 x 512 x 512 (one megapixel each, rounded up).
    assert_eq!(started["estimated_cost_usd"], 0.21);
    let done = wait_generation(&app, started["id"].as_str().unwrap(), finished).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let mut indexes = Vec::new();
    for (i, item) in done["items"].as_array().unwrap().iter().enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["prompt"], format!("{trigger} {}", prompts[i]));
        for image in item["images"].as_array().unwrap() {
            indexes.push(image["index"].as_i64().unwrap());
            check_image(&app, image, "image/jpeg", (512, 512)).await;
        }
    }
    assert_eq!(indexes, [0, 1, 2, 3, 4, 5]);
    assert_eq!(
        sim_requests(&app, "fal-ai/flux-lora").len(),
        3,
        "one fal request per prompt"
    );
    let list = get(&app, &format!("/avatars/{id}/generations")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // The batch limit (GENERATION_MAX_PROMPTS, 10 by default).
    let response = app
        .request(Method::POST, &format!("/avatars/{id}/generations"))
        .json(&json!({"prompts": vec!["x"; 11]}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "prompts");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn every_aspect_ratio_maps_to_a_flux_lora_size(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = trained(&app, "character").await;
    let id = avatar["id"].as_str().unwrap();
    let expected = [
        ("1:1", json!("square_hd"), (1024, 1024)),
        ("3:4", json!("portrait_4_3"), (768, 1024)),
        ("4:3", json!("landscape_4_3"), (1024, 768)),
        ("9:16", json!("portrait_16_9"), (576, 1024)),
        ("16:9", json!("landscape_16_9"), (1024, 576)),
        ("2:3", json!({"width": 832, "height": 1248}), (832, 1248)),
        ("3:2", json!({"width": 1248, "height": 832}), (1248, 832)),
        ("21:9", json!({"width": 1568, "height": 672}), (1568, 672)),
        ("9:21", json!({"width": 672, "height": 1568}), (672, 1568)),
    ];
    let mut started = Vec::new();
    for (ratio, _, _) in &expected {
        let generation = generate(
            &app,
            id,
            json!({"prompt": "x", "aspect_ratio": ratio, "preset": "fast"}),
        )
        .await;
        started.push(generation["id"].as_str().unwrap().to_string());
    }
    for ((ratio, image_size, size), generation) in expected.iter().zip(started) {
        let done = wait_generation(&app, &generation, finished).await;
        assert_eq!(done["status"], "succeeded", "{ratio}: {done:#}");
        let item = &done["items"][0];
        let input = sim_request(&app, &item["fal_request_id"]).input;
        assert_eq!(&input["image_size"], image_size, "{ratio}");
        assert_eq!(done["request"]["image_size"], *image_size, "{ratio}");
        let image = &item["images"][0];
        assert_eq!(
            (image["width"].clone(), image["height"].clone()),
            (json!(size.0), json!(size.1)),
            "{ratio}"
        );
    }
    let response = app
        .request(Method::POST, &format!("/avatars/{id}/generations"))
        .json(&json!({"prompt": "x", "aspect_ratio": "5:4"}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "aspect_ratio");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn prefer_wait_answers_when_done_and_gives_up_in_time(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = trained(&app, "character").await;
    let id = avatar["id"].as_str().unwrap();
    let path = format!("/avatars/{id}/generations");

    let response = app
        .request(Method::POST, &path)
        .header("prefer", "wait=30")
        .json(&json!({"prompt": "x", "preset": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["preference-applied"], "wait=30");
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["items"][0]["images"].as_array().unwrap().len(), 1);

    // A request fal holds in its queue outlasts a one-second wait: 202, as usual.
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        Some("fal-ai/flux-lora"),
        RequestFaults {
            stall: true,
            ..RequestFaults::default()
        },
    );
    let started = tokio::time::Instant::now();
    let response = app
        .request(Method::POST, &path)
        .header("prefer", "respond-async, wait=1")
        .json(&json!({"prompt": "y", "preset": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let pending: Value = response.json().await.unwrap();
    assert_ne!(pending["status"], "succeeded");
    let generation = pending["id"].as_str().unwrap();
    let request_id = wait_generation(&app, generation, |g| {
        g["items"][0]["fal_request_id"].is_string()
    })
    .await["items"][0]["fal_request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sim.release(&request_id));
    let done = wait_generation(&app, generation, finished).await;
    assert_eq!(done["status"], "succeeded");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_duplicate_webhook_leaves_one_result(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool.clone(), FalOptions::default()).await;
    let avatar = trained(&app, "character").await;
    let id = avatar["id"].as_str().unwrap();
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        Some("fal-ai/flux-lora"),
        RequestFaults {
            webhook: WebhookFaults {
                duplicates: 2,
                ..WebhookFaults::default()
            },
            ..RequestFaults::default()
        },
    );
    let done = generate_and_wait(&app, id, json!({"prompt": "x", "num_images": 2})).await;
    assert_eq!(done["status"], "succeeded");
    let request_id = done["items"][0]["fal_request_id"]
        .as_str()
        .unwrap()
        .to_string();
    sim.wait_until(DEADLINE, "three deliveries", |s| {
        s.request(&request_id)
            .is_some_and(|r| r.webhook.attempts.len() >= 3)
    })
    .await
    .unwrap();
    let done = get(
        &app,
        &format!("/generations/{}", done["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(done["items"][0]["images"].as_array().unwrap().len(), 2);
    let (images, completions): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM generation_images),
                (SELECT count(*) FROM job_events e JOIN jobs j ON j.id = e.job_id
                 WHERE j.kind = 'generation' AND e.event = 'fal_succeeded' AND e.applied)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((images, completions), (2, 1));
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn fal_failures_have_stable_codes(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = trained(&app, "character").await;
    let id = avatar["id"].as_str().unwrap();
    let sim = app.sim.as_ref().unwrap();
    let rejected = |kind: &str| RequestFaults {
        fail: Some(FailSpec {
            status: 422,
            error: "The prompt was rejected".into(),
            error_type: kind.into(),
            body: Some(
                json!({"detail": [{"loc": ["body", "prompt"], "msg": "rejected", "type": kind}]}),
            ),
        }),
        ..RequestFaults::default()
    };
    sim.fault_next_requests(
        1,
        Some("fal-ai/flux-lora"),
        rejected("content_policy_violation"),
    );
    let done = generate_and_wait(&app, id, json!({"prompt": "x"})).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(
        done["items"][0]["error"]["code"],
        "content_policy_violation"
    );
    assert_eq!(done["items"][0]["images"], json!([]));

    sim.fault_next_requests(1, Some("fal-ai/flux-lora"), rejected("value_error"));
    let done = generate_and_wait(&app, id, json!({"prompt": "x"})).await;
    assert_eq!(done["items"][0]["error"]["code"], "fal_rejected_input");
    assert_eq!(done["items"][0]["attempts"], 1, "never resubmitted");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_expired_lora_is_uploaded_again_and_the_item_resubmitted(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = trained(&app, "character").await;
    let id = avatar["id"].as_str().unwrap();
    let sim = app.sim.as_ref().unwrap();
    let training = &sim_requests(&app, "fal-ai/flux-lora-portrait-trainer")[0];
    let cdn_url = training.output.as_ref().unwrap()["diffusers_lora_file"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sim.expire_file(&cdn_url));

    let done = generate_and_wait(&app, id, json!({"prompt": "x"})).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let item = &done["items"][0];
    assert_eq!(item["attempts"], 2);
    assert_eq!(item["images"].as_array().unwrap().len(), 1);
    let requests = sim_requests(&app, "fal-ai/flux-lora");
    assert_eq!(requests.len(), 2);
    let failed = requests
        .iter()
        .find(|r| r.input["loras"][0]["path"] == cdn_url.as_str())
        .unwrap();
    assert_eq!(failed.error_type.as_deref(), Some("file_download_error"));
    let retried = sim_request(&app, &item["fal_request_id"]);
    let new_url = retried.input["loras"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_url, cdn_url);
    // fal received our own copy, byte for byte.
    let uploaded = reqwest::get(&new_url).await.unwrap().bytes().await.unwrap();
    let original = app
        .blob_files()
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".safetensors"))
        .unwrap();
    assert_eq!(
        uploaded.as_ref(),
        std::fs::read(original).unwrap().as_slice()
    );

    // The model remembers the new URL: the next generation uses it at once.
    let done = generate_and_wait(&app, id, json!({"prompt": "y"})).await;
    assert_eq!(done["items"][0]["attempts"], 1);
    let input = sim_request(&app, &done["items"][0]["fal_request_id"]).input;
    assert_eq!(input["loras"][0]["path"], new_url.as_str());
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_idempotency_key_replays_the_generation(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = trained(&app, "character").await;
    let id = avatar["id"].as_str().unwrap();
    let path = format!("/avatars/{id}/generations");
    let send = |body: Value| {
        app.request(Method::POST, &path)
            .header("idempotency-key", "gen-1")
            .json(&body)
            .send()
    };
    let first = send(json!({"prompt": "x"})).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = send(json!({"prompt": "x"})).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    let (status, body) = problem(send(json!({"prompt": "other"})).await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_mismatch"))
    );
    // The key covers the route with the avatar's id: the id in capitals names the same avatar,
    // so the first answer comes again; the same body for another avatar is another request.
    let upper = app
        .request(
            Method::POST,
            &format!("/avatars/{}/generations", id.to_uppercase()),
        )
        .header("idempotency-key", "gen-1")
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(upper.status(), 202);
    assert_eq!(upper.headers()["idempotent-replayed"], "true");
    let other = app
        .create_avatar(json!({"name": "other", "kind": "character"}))
        .await;
    let (status, body) = problem(
        app.request(
            Method::POST,
            &format!("/avatars/{}/generations", other["id"].as_str().unwrap()),
        )
        .header("idempotency-key", "gen-1")
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_mismatch"))
    );
    let list = get(&app, &path).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    wait_generation(&app, first["id"].as_str().unwrap(), finished).await;
    assert_eq!(sim_requests(&app, "fal-ai/flux-lora").len(), 1);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn generation_requests_are_checked_before_anything_is_spent(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let untrained = app.avatar_with_photos(0).await;
    let response = app
        .request(Method::POST, &format!("/avatars/{untrained}/generations"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("avatar_not_trained"))
    );

    let long = "a".repeat(2001);
    let cases = [
        (json!({}), "prompt", "required"),
        (json!({"prompt": "   "}), "prompt", "empty"),
        (json!({"prompt": long}), "prompt", "too_long"),
        (json!({"prompts": ["ok", ""]}), "prompts[1]", "empty"),
        (json!({"prompts": []}), "prompts", "out_of_range"),
        (
            json!({"prompt": "x", "prompts": ["y"]}),
            "prompts",
            "conflicting_fields",
        ),
        (
            json!({"prompt": "x", "num_images": 5}),
            "num_images",
            "out_of_range",
        ),
        (
            json!({"prompt": "x", "preset": "turbo"}),
            "preset",
            "invalid_value",
        ),
        (
            json!({"prompt": "x", "output_format": "gif"}),
            "output_format",
            "invalid_value",
        ),
        (json!({"prompt": "x", "width": 512}), "height", "required"),
        (
            json!({"prompt": "x", "lora_scale": 9}),
            "lora_scale",
            "out_of_range",
        ),
        (
            json!({"prompt": "x", "nonsense": 1}),
            "nonsense",
            "unknown_field",
        ),
    ];
    for (body, field, code) in cases {
        let response = app
            .request(Method::POST, &format!("/avatars/{untrained}/generations"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, problem) = problem(response).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["code"], code, "{body}: {problem}");
    }
    assert!(app.sim.as_ref().unwrap().requests().is_empty());
}

/// fal made the image, but it expired before the service copied it: after
/// `CUSTODY_MAX_ATTEMPTS` downloads the item fails `artifact_unavailable` and the generation
/// ends, instead of staying in progress for ever.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_image_that_cannot_be_kept_fails_its_item_after_the_attempts(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool, FalOptions::default(), |settings| {
        settings.jobs.custody_max_attempts = 2;
        settings.jobs.custody_retry_interval = Duration::from_secs(1);
    })
    .await;
    let avatar = trained(&app, "character").await;
    let id = avatar["id"].as_str().unwrap();
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        Some("fal-ai/flux-lora"),
        RequestFaults {
            webhook: WebhookFaults {
                hold: true,
                ..WebhookFaults::default()
            },
            ..RequestFaults::default()
        },
    );
    let started = generate(&app, id, json!({"prompt": "x"})).await;
    let generation = started["id"].as_str().unwrap().to_string();
    sim.wait_until(Duration::from_secs(60), "fal made the image", |s| {
        s.requests()
            .iter()
            .any(|r| r.endpoint == "fal-ai/flux-lora" && r.output.is_some())
    })
    .await
    .unwrap();
    let image = sim_requests(&app, "fal-ai/flux-lora")[0]
        .output
        .as_ref()
        .unwrap()["images"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sim.expire_file(&image));
    let mut released = 0;
    sim.wait_until(Duration::from_secs(60), "fal's callback is released", |s| {
        released += s.release_held_webhooks(fal_sim::HeldWebhookOrder::Fifo);
        released > 0
    })
    .await
    .unwrap();

    let done = wait_generation(&app, &generation, finished).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    let item = &done["items"][0];
    assert_eq!(item["status"], "failed");
    assert_eq!(item["error"]["code"], "artifact_unavailable");
    assert_eq!(item["images"].as_array().map_or(0, Vec::len), 0);
    let image_path = image.split("/files/").nth(1).unwrap().to_string();
    let downloads = sim
        .received_requests()
        .iter()
        .filter(|r| r.path.ends_with(&image_path))
        .count();
    assert_eq!(downloads, 2, "exactly CUSTODY_MAX_ATTEMPTS downloads");
}
