//! The retry policy end to end: what is repeated, what is not, and how a submit with an
//! unknown outcome is reported.

use std::time::{Duration, Instant};

use fal::models;
use fal::{FalError, SubmitError, SubmitOptions, TransportStage};
use fal_sim::SubmitFault;

use crate::common::{self, client_for, received, DEADLINE};

fn prompt() -> serde_json::Value {
    serde_json::json!({"prompt": "x"})
}

fn respond(status: u16, with_request_id: bool, retry_after_secs: Option<u64>) -> SubmitFault {
    SubmitFault::Respond {
        status,
        body: None,
        error_type: Some("runner_connection_refused".into()),
        retry_after_secs,
        with_request_id,
        user_timeout: false,
    }
}

fn submits(env: &common::Env) -> usize {
    received(&env.sim, "POST", "/queue/fal-ai/flux-lora").len()
}

#[tokio::test]
async fn submit_retries_gateway_errors_that_carry_no_request_id() {
    let env = common::start().await;
    env.sim.fail_next_submits(1, respond(429, false, None));
    env.sim.fail_next_submits(1, respond(502, false, None));
    env.sim.fail_next_submits(1, respond(503, false, None));
    let s = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .expect("fourth attempt succeeds");
    assert_eq!(submits(&env), 4);
    assert_eq!(env.sim.requests().len(), 1, "exactly one job exists");
    env.sim
        .wait_for_completion(&s.request_id, DEADLINE)
        .await
        .unwrap();
    env.sim.shutdown().await;
}

#[tokio::test]
async fn submit_gives_up_after_the_configured_retries() {
    let env = common::start().await;
    env.sim.fail_next_submits(10, respond(504, false, None));
    let err = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SubmitError::NotAccepted(FalError::Server { status: 504, .. })
        ),
        "{err:?}"
    );
    assert_eq!(submits(&env), 4, "one attempt and three retries");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn submit_with_a_request_id_in_the_error_is_outcome_unknown_and_not_retried() {
    let env = common::start().await;
    env.sim.fail_next_submits(3, respond(503, true, None));
    let err = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    let SubmitError::OutcomeUnknown { request_id, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(request_id.is_some());
    assert_eq!(submits(&env), 1);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn submit_never_retries_client_errors_or_500() {
    let env = common::start().await;
    for status in [400u16, 401, 403, 404, 422, 500] {
        env.sim.clear_received_requests();
        env.sim.fail_next_submits(2, respond(status, false, None));
        let err = env
            .client
            .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, SubmitError::NotAccepted(_)),
            "{status}: {err:?}"
        );
        assert_eq!(err.cause().http_status(), Some(status));
        assert_eq!(submits(&env), 1, "{status} is not retried");
        env.sim.clear_faults();
    }
    env.sim.shutdown().await;
}

#[tokio::test]
async fn connection_closed_after_the_submit_is_outcome_unknown_and_the_job_exists() {
    let env = common::start().await;
    env.sim
        .fail_next_submits(1, SubmitFault::CloseConnection { enqueue: true });
    let err = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    let SubmitError::OutcomeUnknown {
        request_id: None,
        cause,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(
        matches!(
            cause,
            FalError::Transport {
                stage: TransportStage::AfterSend,
                ..
            }
        ),
        "{cause:?}"
    );
    assert_eq!(submits(&env), 1, "an unknown outcome is never retried");
    // fal did accept it: the job runs although the caller never learnt its id.
    let jobs = env.sim.requests();
    assert_eq!(jobs.len(), 1);
    env.sim
        .wait_for_completion(&jobs[0].request_id, DEADLINE)
        .await
        .unwrap();
    env.sim.shutdown().await;
}

#[tokio::test]
async fn client_timeout_after_sending_is_outcome_unknown() {
    let env = common::start().await;
    env.sim
        .fail_next_submits(1, SubmitFault::CloseConnection { enqueue: false });
    let err = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, SubmitError::OutcomeUnknown { .. }), "{err:?}");
    assert!(
        env.sim.requests().is_empty(),
        "this time fal dropped it: only a status lookup or deadline can tell"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn retry_after_within_the_cap_is_honoured() {
    let env = common::start().await;
    let client = client_for(&env.sim, env.sim.default_key().unwrap(), |c| {
        c.retry.submit = c
            .retry
            .submit
            .clone()
            .with_delays(Duration::from_millis(1), Duration::from_secs(5));
    });
    env.sim.fail_next_submits(1, respond(429, false, Some(1)));
    let started = Instant::now();
    client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .expect("second attempt");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    assert_eq!(submits(&env), 2);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn status_result_and_cancel_retry_transient_errors_including_500() {
    let env = common::start().await;
    let s = env
        .client
        .submit(models::FLUX_LORA, &prompt(), &SubmitOptions::default())
        .await
        .unwrap();
    let request = s.request_ref();
    let status_calls = || received(&env.sim, "GET", request.status_url.path()).len();

    env.sim.fail_next_reads(1, respond(500, true, None));
    env.sim.fail_next_reads(1, respond(502, false, None));
    env.client
        .status(&request, false)
        .await
        .expect("third attempt succeeds");
    assert_eq!(status_calls(), 3);

    env.sim.fail_next_reads(10, respond(503, false, None));
    let err = env.client.status(&request, false).await.unwrap_err();
    assert!(
        matches!(err, FalError::Server { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(status_calls(), 3 + 6, "one attempt and five retries");
    env.sim.clear_faults();

    for status in [401u16, 403, 404, 422] {
        env.sim.fail_next_reads(2, respond(status, false, None));
        let before = received(&env.sim, "PUT", request.cancel_url.path()).len();
        let err = env.client.cancel(&request).await.unwrap_err();
        assert_eq!(err.http_status(), Some(status));
        assert_eq!(
            received(&env.sim, "PUT", request.cancel_url.path()).len(),
            before + 1,
            "{status} not retried"
        );
        env.sim.clear_faults();
    }
    env.sim
        .wait_for_completion(&s.request_id, DEADLINE)
        .await
        .unwrap();
    env.sim.fail_next_reads(1, respond(429, false, None));
    env.client.result(&request).await.expect("429 retried");
    env.sim.shutdown().await;
}
