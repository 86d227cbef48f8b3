//! Queue operations: submit, status (with/without logs), stream, result, cancel, URL rules.

use std::time::Duration;

use fal::models::{
    self, FluxLoraInput, ImageSize, ImagesOutput, ProTrainerInput, ProTrainerOutput,
    UltraFinetunedInput,
};
use fal::{CancelOutcome, FalError, QueuePriority, QueueStatus, SubmitOptions};
use fal_sim::{RequestFaults, SimConfig};
use futures_util::StreamExt;

use crate::common::{self, poll_until_completed, received, DEADLINE};

fn png_dimensions(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

#[tokio::test]
async fn flux_lora_round_trip_returns_real_images_of_the_requested_size() {
    let env = common::start().await;
    let input = FluxLoraInput {
        prompt: "a portrait of TOK".into(),
        image_size: Some(ImageSize::Custom {
            width: Some(64),
            height: Some(48),
        }),
        num_images: Some(2),
        output_format: Some("png".into()),
        seed: Some(u64::MAX - 1),
        ..Default::default()
    };
    let submitted = env
        .client
        .submit(models::FLUX_LORA, &input, &SubmitOptions::default())
        .await
        .expect("submit");
    assert_eq!(submitted.status.as_deref(), Some("IN_QUEUE"));
    assert!(submitted.queue_position.is_some());
    let expected_base = format!(
        "{}/fal-ai/flux-lora/requests/{}",
        env.sim.queue_url(),
        submitted.request_id
    );
    assert_eq!(submitted.response_url.as_str(), expected_base);
    assert_eq!(
        submitted.status_url.as_str(),
        format!("{expected_base}/status")
    );
    assert_eq!(
        submitted.cancel_url.as_str(),
        format!("{expected_base}/cancel")
    );

    let submit = &received(&env.sim, "POST", "/queue/fal-ai/flux-lora")[0];
    assert_eq!(submit.header("authorization"), Some("Key sim-key-id:***"));
    assert_eq!(submit.header("content-type"), Some("application/json"));
    assert_eq!(submit.body_json().unwrap()["prompt"], "a portrait of TOK");

    let request = submitted.request_ref();
    let status = poll_until_completed(&env.client, &request).await;
    let QueueStatus::Completed { metrics, error, .. } = &status else {
        unreachable!()
    };
    assert!(error.is_none());
    assert!(metrics.as_ref().and_then(|m| m.inference_time).is_some());
    assert!(status.logs().iter().any(|l| l.message.starts_with("step ")));

    let output: ImagesOutput = env.client.result_as(&request).await.expect("result");
    assert_eq!(output.images.len(), 2);
    assert_eq!(output.seed, Some(u64::MAX - 1));
    assert_eq!(output.has_nsfw_concepts, vec![false, false]);
    for image in &output.images {
        assert_eq!((image.width, image.height), (Some(64), Some(48)));
        assert_eq!(image.content_type.as_deref(), Some("image/png"));
        let bytes = reqwest::get(&image.url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(png_dimensions(&bytes), (64, 48));
        assert_eq!(image.file_size, Some(bytes.len() as u64));
    }
    env.sim.shutdown().await;
}

#[tokio::test]
async fn subpath_endpoint_polls_owner_alias_and_the_id_only_rule_matches() {
    let env = common::start().await;
    let data_url = common::upload_training_zip(&env.client, 5).await;
    let trained = env
        .client
        .submit(
            models::PRO_TRAINER,
            &ProTrainerInput {
                data_url: data_url.to_string(),
                finetune_comment: "avatar-1".into(),
                mode: None,
                iterations: Some(100),
                learning_rate: None,
                priority: None,
                captioning: None,
                trigger_word: None,
                lora_rank: None,
                finetune_type: None,
            },
            &SubmitOptions::default(),
        )
        .await
        .expect("submit trainer");
    poll_until_completed(&env.client, &trained.request_ref()).await;
    let finetune: ProTrainerOutput = env
        .client
        .result_as(&trained.request_ref())
        .await
        .expect("finetune");

    let input = UltraFinetunedInput {
        prompt: "TOK in Paris".into(),
        finetune_id: finetune.finetune_id,
        finetune_strength: 1.1,
        aspect_ratio: Some("1:1".into()),
        ..Default::default()
    };
    let submitted = env
        .client
        .submit(models::ULTRA_FINETUNED, &input, &SubmitOptions::default())
        .await
        .expect("submit ultra");
    assert_eq!(
        received(
            &env.sim,
            "POST",
            "/queue/fal-ai/flux-pro/v1.1-ultra-finetuned"
        )
        .len(),
        1
    );
    assert_eq!(
        submitted.status_url.path(),
        format!(
            "/queue/fal-ai/flux-pro/requests/{}/status",
            submitted.request_id
        )
    );
    let by_rule = env
        .client
        .request_ref(models::ULTRA_FINETUNED, &submitted.request_id)
        .unwrap();
    assert_eq!(by_rule, submitted.request_ref());

    poll_until_completed(&env.client, &by_rule).await;
    let output: ImagesOutput = env.client.result_as(&by_rule).await.expect("result");
    // 1:1 is 2048x2048, divided by the fast config's divisor of 16.
    assert_eq!(
        (output.images[0].width, output.images[0].height),
        (Some(128), Some(128))
    );
    let bytes = reqwest::get(&output.images[0].url)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "default output is JPEG"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn submit_options_travel_as_query_parameters_and_headers() {
    let env = common::start().await;
    let webhook = url::Url::parse("http://127.0.0.1:9/webhooks/fal?job=7&token=a%20b").unwrap();
    let options = SubmitOptions {
        webhook_url: Some(webhook.clone()),
        priority: Some(QueuePriority::Low),
        request_timeout: Some(Duration::from_secs(30)),
        max_queue_length: Some(5),
        output_lifecycle: Some(fal::ObjectLifecycle::expires_after(Duration::from_secs(
            86_400,
        ))),
    };
    env.client
        .submit(
            models::FLUX_LORA,
            &serde_json::json!({"prompt": "x"}),
            &options,
        )
        .await
        .expect("submit");
    let submit = &received(&env.sim, "POST", "/queue/fal-ai/flux-lora")[0];
    assert_eq!(
        submit.query_param("fal_webhook").as_deref(),
        Some(webhook.as_str())
    );
    assert_eq!(
        submit.query_param("fal_max_queue_length").as_deref(),
        Some("5")
    );
    assert_eq!(submit.header("x-fal-queue-priority"), Some("low"));
    assert_eq!(submit.header("x-fal-request-timeout"), Some("30"));
    assert_eq!(
        submit.header("x-fal-object-lifecycle-preference"),
        Some(r#"{"expiration_duration_seconds":86400}"#)
    );
    let body = submit.body_json().unwrap();
    assert_eq!(
        body,
        serde_json::json!({"prompt": "x"}),
        "nothing but the input in the body"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn request_timeout_of_one_second_or_less_is_refused_before_sending() {
    let env = common::start().await;
    let options = SubmitOptions {
        request_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let err = env
        .client
        .submit(
            models::FLUX_LORA,
            &serde_json::json!({"prompt": "x"}),
            &options,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            fal::SubmitError::NotAccepted(FalError::InvalidRequest(_))
        ),
        "{err:?}"
    );
    assert!(received(&env.sim, "POST", "/queue/fal-ai/flux-lora").is_empty());
    env.sim.shutdown().await;
}

#[tokio::test]
async fn queue_positions_follow_the_concurrency_limit() {
    // Slow enough that the running request is still running while the others are inspected.
    let env = common::start_with(SimConfig {
        concurrency_per_endpoint: 1,
        time_factor: 0.05,
        ..SimConfig::fast()
    })
    .await;
    // The first request stalls, so it keeps its place; the limit of one lets the next run.
    env.sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let light =
        serde_json::json!({"prompt": "x", "num_inference_steps": 1, "image_size": "square"});
    let heavy = serde_json::json!({"prompt": "x", "num_inference_steps": 50, "num_images": 4, "image_size": "square"});
    let mut refs = Vec::new();
    for input in [&light, &heavy, &light] {
        let s = env
            .client
            .submit(models::FLUX_LORA, input, &SubmitOptions::default())
            .await
            .unwrap();
        refs.push(s.request_ref());
    }
    // Request 0 stalls at position 0; request 1 runs (about 1 s); request 2 waits behind 0.
    env.sim
        .wait_until(DEADLINE, "second request running", |sim| {
            sim.request(&refs[1].request_id)
                .is_some_and(|r| r.state == fal_sim::QueueState::InProgress)
        })
        .await
        .unwrap();
    assert_eq!(
        env.client.status(&refs[0], false).await.unwrap(),
        QueueStatus::InQueue {
            queue_position: Some(0)
        }
    );
    assert_eq!(
        env.client.status(&refs[2], false).await.unwrap(),
        QueueStatus::InQueue {
            queue_position: Some(1)
        }
    );
    let in_progress = env.client.status(&refs[1], false).await.unwrap();
    assert_eq!(
        in_progress,
        QueueStatus::InProgress { logs: None },
        "logs are null unless asked for"
    );

    assert!(env.sim.release(&refs[0].request_id));
    for r in &refs {
        env.sim
            .wait_for_completion(&r.request_id, DEADLINE)
            .await
            .unwrap();
    }
    env.sim.shutdown().await;
}

#[tokio::test]
async fn status_codes_and_log_flags_match_the_protocol() {
    let env = common::start().await;
    env.sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let s = env
        .client
        .submit(
            models::FLUX_LORA,
            &serde_json::json!({"prompt": "x"}),
            &SubmitOptions::default(),
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let get = |query: &'static str| {
        let url = format!("{}?{query}", s.status_url);
        http.get(url)
            .header("authorization", "Key sim-key-id:sim-key-secret")
            .send()
    };
    let queued = get("logs=1").await.unwrap();
    assert_eq!(queued.status().as_u16(), 202);
    let body: serde_json::Value = queued.json().await.unwrap();
    assert_eq!(body["status"], "IN_QUEUE");
    assert_eq!(body["queue_position"], 0);
    for key in ["request_id", "response_url", "status_url", "cancel_url"] {
        assert!(body[key].is_string(), "{key} present");
    }
    env.sim.release(&s.request_id);
    env.sim
        .wait_for_completion(&s.request_id, DEADLINE)
        .await
        .unwrap();
    for (query, expect_logs) in [
        ("logs=1", true),
        ("logs=true", true),
        ("logs=0", false),
        ("logs=false", false),
    ] {
        let done = get(query).await.unwrap();
        assert_eq!(done.status().as_u16(), 200);
        let body: serde_json::Value = done.json().await.unwrap();
        assert_eq!(body["status"], "COMPLETED");
        assert!(body.get("queue_position").is_none());
        assert!(
            body.as_object().unwrap().contains_key("logs"),
            "logs key always present"
        );
        assert_eq!(body["logs"].is_array(), expect_logs, "{query}");
    }
    env.sim.shutdown().await;
}

#[tokio::test]
async fn status_stream_follows_a_training_to_completion() {
    let env = common::start().await;
    let url = common::upload_training_zip(&env.client, 3).await;
    let s = env
        .client
        .submit(
            models::PORTRAIT_TRAINER,
            &serde_json::json!({"images_data_url": url, "steps": 1000}),
            &SubmitOptions::default(),
        )
        .await
        .unwrap();
    let mut stream = env
        .client
        .status_stream(&s.request_ref(), true)
        .await
        .expect("stream");
    let mut events = Vec::new();
    let collect = async {
        while let Some(event) = stream.next().await {
            events.push(event.expect("event"));
        }
    };
    tokio::time::timeout(DEADLINE, collect)
        .await
        .expect("stream ends after COMPLETED");
    assert!(events.last().unwrap().is_completed());
    let progress: Vec<&str> = events
        .iter()
        .filter(|e| matches!(e, QueueStatus::InProgress { .. }))
        .flat_map(|e| e.logs().iter().map(|l| l.message.as_str()))
        .collect();
    assert!(
        progress.iter().any(|m| m.contains("/1000")),
        "progress logs: {progress:?}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn cancel_answers_requested_then_already_completed_then_not_found() {
    let env = common::start().await;
    env.sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let s = env
        .client
        .submit(
            models::FLUX_LORA,
            &serde_json::json!({"prompt": "x"}),
            &SubmitOptions::default(),
        )
        .await
        .unwrap();
    let request = s.request_ref();
    assert_eq!(
        env.client.cancel(&request).await.unwrap(),
        CancelOutcome::CancellationRequested
    );
    let cancel = &received(&env.sim, "PUT", request.cancel_url.path())[0];
    assert_eq!(cancel.body_len, 0, "cancel has no body");
    let status = env.client.status(&request, false).await.unwrap();
    let QueueStatus::Completed { error_type, .. } = status else {
        panic!("{status:?}")
    };
    assert_eq!(error_type.as_deref(), Some("client_cancelled"));
    assert_eq!(
        env.client.cancel(&request).await.unwrap(),
        CancelOutcome::AlreadyCompleted
    );
    let missing = env
        .client
        .request_ref(models::FLUX_LORA, "00000000-0000-0000-0000-000000000000")
        .unwrap();
    let err = env.client.cancel(&missing).await.unwrap_err();
    assert!(
        matches!(err, FalError::NotFound { ref detail } if detail == "NOT_FOUND"),
        "{err:?}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn cancel_of_a_running_request_stops_it() {
    let env = common::start_with(SimConfig {
        time_factor: 0.01,
        ..SimConfig::fast()
    })
    .await;
    let s = env
        .client
        .submit(
            models::FLUX_LORA,
            &serde_json::json!({"prompt": "x", "num_inference_steps": 50, "num_images": 4}),
            &SubmitOptions::default(),
        )
        .await
        .unwrap();
    env.sim
        .wait_until(DEADLINE, "running", |sim| {
            sim.request(&s.request_id)
                .is_some_and(|r| r.state == fal_sim::QueueState::InProgress)
        })
        .await
        .unwrap();
    assert_eq!(
        env.client.cancel(&s.request_ref()).await.unwrap(),
        CancelOutcome::CancellationRequested
    );
    let report = env
        .sim
        .wait_for_completion(&s.request_id, DEADLINE)
        .await
        .unwrap();
    assert_eq!(report.error_type.as_deref(), Some("client_cancelled"));
    assert_eq!(report.result_status, Some(499));
    env.sim.shutdown().await;
}

#[tokio::test]
async fn result_before_completion_is_still_in_progress() {
    let env = common::start().await;
    env.sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let s = env
        .client
        .submit(
            models::FLUX_LORA,
            &serde_json::json!({"prompt": "x"}),
            &SubmitOptions::default(),
        )
        .await
        .unwrap();
    let err = env.client.result(&s.request_ref()).await.unwrap_err();
    assert!(
        matches!(err, FalError::Http { status: 400, ref detail, .. } if detail == "Request is still in progress"),
        "{err:?}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn low_priority_requests_wait_behind_normal_ones() {
    let env = common::start_with(SimConfig {
        concurrency_per_endpoint: 1,
        time_factor: 0.05,
        ..SimConfig::fast()
    })
    .await;
    let heavy = serde_json::json!({"prompt": "x", "num_inference_steps": 50, "num_images": 4, "image_size": "square"});
    let light =
        serde_json::json!({"prompt": "x", "num_inference_steps": 1, "image_size": "square"});
    let running = env
        .client
        .submit(models::FLUX_LORA, &heavy, &SubmitOptions::default())
        .await
        .unwrap();
    env.sim
        .wait_until(DEADLINE, "first request running", |sim| {
            sim.request(&running.request_id)
                .is_some_and(|r| r.state == fal_sim::QueueState::InProgress)
        })
        .await
        .unwrap();
    let low = SubmitOptions {
        priority: Some(QueuePriority::Low),
        ..Default::default()
    };
    let late_low = env
        .client
        .submit(models::FLUX_LORA, &light, &low)
        .await
        .unwrap();
    let normal = env
        .client
        .submit(models::FLUX_LORA, &light, &SubmitOptions::default())
        .await
        .unwrap();
    assert_eq!(
        normal.queue_position,
        Some(0),
        "a normal request goes ahead of a low one"
    );
    assert_eq!(
        env.client
            .status(&late_low.request_ref(), false)
            .await
            .unwrap(),
        QueueStatus::InQueue {
            queue_position: Some(1)
        }
    );
    for id in [
        &running.request_id,
        &normal.request_id,
        &late_low.request_id,
    ] {
        env.sim.wait_for_completion(id, DEADLINE).await.unwrap();
    }
    env.sim.shutdown().await;
}

#[tokio::test]
async fn submit_time_validation_is_a_simulator_option() {
    let env = common::start_with(SimConfig {
        validate_at_submit: true,
        ..SimConfig::fast()
    })
    .await;
    let err = env
        .client
        .submit(
            models::ULTRA_FINETUNED,
            &serde_json::json!({"prompt": "x"}),
            &SubmitOptions::default(),
        )
        .await
        .unwrap_err();
    let fal::SubmitError::NotAccepted(FalError::Validation { issues, .. }) = &err else {
        panic!("{err:?}")
    };
    let fields: Vec<_> = issues
        .iter()
        .map(|i| i.loc[1].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["finetune_id", "finetune_strength"]);
    assert!(env.sim.requests().is_empty());
    env.sim.shutdown().await;
}

/// Counts the times it is asked, and sends the count.
struct CountingHeaders(std::sync::atomic::AtomicU32);

impl fal::RequestHeaders for CountingHeaders {
    fn add_to(&self, headers: &mut http::HeaderMap) {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        headers.insert("x-caller-header", n.into());
    }
}

#[tokio::test]
async fn the_callers_headers_go_on_every_request_asked_for_each() {
    let env = common::start().await;
    let client = env
        .client
        .clone()
        .with_request_headers(std::sync::Arc::new(CountingHeaders(Default::default())));
    let archive = common::TempFile::with_bytes("training.zip", &common::training_zip(2));
    client
        .upload_file(&archive.0, "application/zip", None)
        .await
        .expect("upload");
    let submitted = client
        .submit(
            models::FLUX_LORA,
            &serde_json::json!({"prompt": "x"}),
            &SubmitOptions::default(),
        )
        .await
        .expect("submit");
    client
        .status(&submitted.request_ref(), false)
        .await
        .expect("status");
    let sent: Vec<String> = env
        .sim
        .received_requests()
        .iter()
        .map(|r| {
            r.header("x-caller-header")
                .unwrap_or_else(|| panic!("{} {} without the header", r.method, r.path))
                .to_string()
        })
        .collect();
    let expected: Vec<String> = (1..=sent.len()).map(|n| n.to_string()).collect();
    assert!(
        sent.len() >= 4,
        "initiate, upload, submit, status: {sent:?}"
    );
    assert_eq!(sent, expected, "asked once per request, in order");
    env.sim.shutdown().await;
}
