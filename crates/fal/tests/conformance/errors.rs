//! Every error class, as produced by the simulator and classified by the client.

use std::time::Duration;

use fal::models;
use fal::{FalError, QueueStatus, SubmitError, SubmitOptions, TransportStage};
use fal_sim::{FailSpec, KeyKind, RequestFaults, SubmitFault};

use crate::common::{self, client_for, poll_until_completed, DEADLINE};

fn prompt() -> serde_json::Value {
    serde_json::json!({"prompt": "x"})
}

fn respond(status: u16, body: Option<serde_json::Value>) -> SubmitFault {
    SubmitFault::Respond {
        status,
        body,
        error_type: None,
        retry_after_secs: None,
        with_request_id: false,
        user_timeout: false,
    }
}

#[tokio::test]
async fn unknown_key_is_unauthorized_everywhere() {
    let env = common::start().await;
    let stranger = client_for(&env.sim, "unknown-id:unknown-secret", |_| {});
    let err = stranger
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    let SubmitError::NotAccepted(FalError::Unauthorized { detail }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(detail, "No user found for Key ID and Secret");

    let s = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap();
    let err = stranger.status(&s.request_ref(), false).await.unwrap_err();
    assert!(matches!(err, FalError::Unauthorized { .. }), "{err:?}");
    let malformed = client_for(&env.sim, "no-colon-in-this-key", |_| {});
    let err = malformed.result(&s.request_ref()).await.unwrap_err();
    assert!(
        matches!(err, FalError::Unauthorized { ref detail } if detail.contains("Invalid Key Authorization header format")),
        "{err:?}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn billing_locked_key_is_a_billing_lock_on_submit_and_upload() {
    let env = common::start().await;
    env.sim
        .register_key("locked-id:locked-secret", KeyKind::BillingLocked);
    let locked = client_for(&env.sim, "locked-id:locked-secret", |_| {});
    let err = locked
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    let SubmitError::NotAccepted(FalError::BillingLocked { detail }) = &err else {
        panic!("{err:?}")
    };
    assert!(detail.starts_with("User is locked. Reason: Exhausted balance."));
    let file = common::TempFile::with_bytes("a.zip", &common::training_zip(1));
    let err = locked
        .upload_file(&file.0, "application/zip", None)
        .await
        .unwrap_err();
    assert!(matches!(err, FalError::BillingLocked { .. }), "{err:?}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn other_403_is_forbidden() {
    let env = common::start().await;
    env.sim.fail_next_submits(
        1,
        respond(
            403,
            Some(serde_json::json!({"detail": "Content policy violation"})),
        ),
    );
    let err = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SubmitError::NotAccepted(FalError::Forbidden { ref detail }) if detail == "Content policy violation"),
        "{err:?}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn unknown_endpoint_is_not_found() {
    let env = common::start().await;
    let err = env
        .client
        .submit("fal-ai/no-such-model", &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SubmitError::NotAccepted(FalError::NotFound { .. })),
        "{err:?}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn validation_failure_surfaces_as_completed_then_422_with_detail_list() {
    let env = common::start().await;
    let s = env
        .client
        .submit(
            models::FLUX_LORA,
            &serde_json::json!({"num_images": 9}),
            &SubmitOptions::default(),
        )
        .await
        .expect("fal accepts the submit and fails the request");
    let status = poll_until_completed(&env.client, &s.request_ref()).await;
    let QueueStatus::Completed { error_type, .. } = status else {
        unreachable!()
    };
    assert_eq!(error_type.as_deref(), Some("value_error.missing"));
    let err = env.client.result(&s.request_ref()).await.unwrap_err();
    let FalError::Validation { issues, request_id } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(request_id.as_deref(), Some(s.request_id.as_str()));
    assert_eq!(issues.len(), 2);
    assert_eq!(
        issues[0].loc,
        vec![serde_json::json!("body"), serde_json::json!("prompt")]
    );
    assert_eq!(issues[0].kind, "value_error.missing");
    assert_eq!(issues[1].kind, "value_error.number.not_le");
    assert!(issues[1].ctx.is_some());
    assert!(err.to_string().contains("body.prompt: field required"));
    env.sim.shutdown().await;
}

#[tokio::test]
async fn validation_with_string_detail_becomes_one_issue() {
    let env = common::start().await;
    env.sim.fail_next_submits(
        1,
        respond(
            422,
            Some(serde_json::json!({"detail": "Unsupported archive format"})),
        ),
    );
    let err = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    let SubmitError::NotAccepted(FalError::Validation { issues, .. }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].loc, vec![serde_json::json!("body")]);
    assert_eq!(issues[0].msg, "Unsupported archive format");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_beyond_the_retry_cap_is_reported_with_retry_after() {
    let env = common::start().await;
    env.sim.fail_next_submits(
        4,
        SubmitFault::Respond {
            status: 429,
            body: None,
            error_type: None,
            retry_after_secs: Some(7),
            with_request_id: false,
            user_timeout: false,
        },
    );
    let err = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    let SubmitError::NotAccepted(FalError::RateLimited { retry_after, .. }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*retry_after, Some(Duration::from_secs(7)));
    assert_eq!(
        common::received(&env.sim, "POST", "/queue/fal-ai/flux-lora").len(),
        1,
        "a 7 s wait exceeds the 50 ms cap"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn queue_length_limit_answers_429() {
    let env = common::start().await;
    env.sim.fault_next_requests(
        2,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let options = SubmitOptions {
        max_queue_length: Some(2),
        ..Default::default()
    };
    let client = client_for(&env.sim, env.sim.default_key().unwrap(), |c| {
        c.retry = fal::RetryPolicies::none()
    });
    for _ in 0..2 {
        client
            .submit(models::FLUX_LORA, &prompt(), &options)
            .await
            .expect("room in the queue");
    }
    let err = client
        .submit(models::FLUX_LORA, &prompt(), &options)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SubmitError::NotAccepted(FalError::RateLimited { .. })),
        "{err:?}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn user_timeout_is_its_own_class_and_never_retried() {
    let env = common::start().await;
    env.sim.fail_next_submits(
        3,
        SubmitFault::Respond {
            status: 504,
            body: Some(
                serde_json::json!({"detail": "Request timed out", "error_type": "request_timeout"}),
            ),
            error_type: Some("request_timeout".into()),
            retry_after_secs: None,
            with_request_id: false,
            user_timeout: true,
        },
    );
    let err = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SubmitError::NotAccepted(FalError::UserTimeout { .. })),
        "{err:?}"
    );
    assert_eq!(
        common::received(&env.sim, "POST", "/queue/fal-ai/flux-lora").len(),
        1
    );
    env.sim.clear_faults();

    // End to end: a request that cannot start before its deadline completes with a user 504.
    env.sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let options = SubmitOptions {
        request_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let s = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &options)
        .await
        .unwrap();
    env.sim
        .wait_for_completion(&s.request_id, DEADLINE)
        .await
        .unwrap();
    let err = env.client.result(&s.request_ref()).await.unwrap_err();
    assert!(matches!(err, FalError::UserTimeout { .. }), "{err:?}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn runner_failure_is_a_server_error_with_its_type() {
    let env = common::start().await;
    env.sim.fault_next_requests(
        1,
        Some(models::FLUX_LORA),
        RequestFaults {
            fail: Some(FailSpec {
                status: 503,
                error: "Runner disconnected".into(),
                error_type: "runner_disconnected".into(),
                body: None,
            }),
            ..Default::default()
        },
    );
    let s = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap();
    let status = poll_until_completed(&env.client, &s.request_ref()).await;
    assert_eq!(
        status,
        QueueStatus::Completed {
            logs: status.logs().to_vec().into(),
            metrics: Some(Default::default()),
            error: Some("Runner disconnected".into()),
            error_type: Some("runner_disconnected".into()),
        }
    );
    let err = env.client.result(&s.request_ref()).await.unwrap_err();
    let FalError::Server {
        status,
        error_type,
        request_id,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*status, 503);
    assert_eq!(error_type.as_deref(), Some("runner_disconnected"));
    assert_eq!(request_id.as_deref(), Some(s.request_id.as_str()));
    // The result was retried (503 is retryable for reads) and failed the same way each time.
    assert_eq!(
        common::received(&env.sim, "GET", s.response_url.path()).len(),
        6
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn refused_connection_is_a_transport_error_and_certainly_not_accepted() {
    let env = common::start().await;
    // A port that was just free: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = client_for(&env.sim, "k:s", |c| {
        c.queue_url = url::Url::parse(&format!("http://{closed}/queue")).unwrap();
    });
    let err = client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SubmitError::NotAccepted(FalError::Transport {
                stage: TransportStage::Connect,
                ..
            })
        ),
        "{err:?}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn non_json_success_body_is_a_decode_error() {
    let env = common::start().await;
    let file = common::TempFile::with_bytes("notes.txt", b"not json at all");
    let uploaded = env
        .client
        .upload_file(&file.0, "text/plain", None)
        .await
        .unwrap();
    let request = fal::RequestRef {
        request_id: "r".into(),
        status_url: uploaded.file_url.clone(),
        response_url: uploaded.file_url.clone(),
        cancel_url: uploaded.file_url,
    };
    let err = env.client.result(&request).await.unwrap_err();
    assert!(
        matches!(
            err,
            FalError::Decode {
                context: "result",
                ..
            }
        ),
        "{err:?}"
    );
    env.sim.shutdown().await;
}
