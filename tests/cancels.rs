//! Cancels owed to fal are durable: recorded before fal is called, retried until fal answers,
//! also by another process after a restart, and sent once a mid-submit job's request id is
//! known. Leases outlive the work: a slow upload is renewed, never redone by another replica,
//! and a submit answered after the lease ran out still records its request.

use std::time::Duration;

use blackbox::{FalOptions, TestApp};
use fal_sim::{RequestFaults, SubmitFault};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// fal answering a read (here: a cancel) with a plain server error.
fn server_error() -> SubmitFault {
    SubmitFault::Respond {
        status: 500,
        body: None,
        error_type: None,
        retry_after_secs: None,
        with_request_id: false,
        user_timeout: false,
    }
}

/// Cancels fal received, for any request.
fn cancels_received(app: &TestApp) -> usize {
    app.sim
        .as_ref()
        .unwrap()
        .received_requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/cancel"))
        .count()
}

/// Files uploaded to fal storage (single-PUT uploads).
fn uploads_received(app: &TestApp) -> usize {
    app.sim
        .as_ref()
        .unwrap()
        .received_requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/upload/"))
        .count()
}

fn submits_received(app: &TestApp) -> usize {
    app.sim.as_ref().unwrap().requests().len()
}

/// The next request fal accepts stays in its queue (no result, no callback) until released.
fn stall_next_request(app: &TestApp) {
    app.sim.as_ref().unwrap().fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..RequestFaults::default()
        },
    );
}

/// Whether fal-sim took a cancel of `request_id`.
fn fal_took_cancel(app: &TestApp, request_id: &str) -> bool {
    app.sim
        .as_ref()
        .unwrap()
        .request(request_id)
        .unwrap()
        .cancel_requested
}

async fn cancel(app: &TestApp, id: &str) -> Value {
    let response = app
        .request(Method::POST, &format!("/trainings/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_deadline_cancel_fal_fails_is_retried_until_fal_confirms_it(pool: PgPool) {
    let options = FalOptions {
        training_timeout: Duration::from_secs(2),
        ..FalOptions::default()
    };
    let app = TestApp::spawn_with_fal_and(pool, options, |settings| {
        settings.jobs.cancel_retry_interval = Duration::from_millis(20);
    })
    .await;
    let avatar = app.avatar_with_photos(10).await;
    stall_next_request(&app);
    // Nothing reads from fal before the deadline (no lookups are due): the three failures
    // are the first three cancels.
    app.sim.as_ref().unwrap().fail_next_reads(3, server_error());
    let started = app
        .start_training(&avatar, json!({"overrides": {"steps": 5}}))
        .await;
    let id = started["id"].as_str().unwrap();
    let done = app
        .wait_for_training(id, "timed out", |t| t["status"] == "timed_out")
        .await;
    assert_eq!(done["error"]["code"], "training_timeout");
    assert_eq!(
        cancels_received(&app),
        4,
        "three refused cancels, then one accepted"
    );
    assert!(
        fal_took_cancel(&app, done["fal_request_id"].as_str().unwrap()),
        "fal got the cancel"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_cancel_fal_never_confirms_ends_unconfirmed_after_the_last_attempt(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool, FalOptions::default(), |settings| {
        settings.jobs.cancel_max_attempts = 2;
        settings.jobs.cancel_retry_interval = Duration::from_millis(20);
    })
    .await;
    let avatar = app.avatar_with_photos(10).await;
    stall_next_request(&app);
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap();
    let submitted = app
        .wait_for_training(id, "submitted", |t| t["status"] == "submitted")
        .await;
    app.sim
        .as_ref()
        .unwrap()
        .fail_next_reads(50, server_error());
    // fal refused the first attempt: the cancel is accepted and owed, the training still runs.
    let answer = cancel(&app, id).await;
    assert_eq!(answer["status"], "submitted");
    assert_eq!(answer["cancel_requested"], true);
    let done = app
        .wait_for_training(id, "cancelled", |t| t["status"] == "cancelled")
        .await;
    assert_eq!(done["error"]["code"], "cancel_unconfirmed");
    assert_eq!(
        cancels_received(&app),
        2,
        "CANCEL_MAX_ATTEMPTS attempts, no more"
    );
    assert!(
        !fal_took_cancel(&app, submitted["fal_request_id"].as_str().unwrap()),
        "fal never took the cancel"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_callers_cancel_survives_a_restart_until_fal_takes_it(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool, FalOptions::default(), |settings| {
        settings.jobs.cancel_max_attempts = 100;
        settings.jobs.cancel_retry_interval = Duration::from_millis(100);
    })
    .await;
    let avatar = app.avatar_with_photos(10).await;
    stall_next_request(&app);
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap().to_string();
    let submitted = app
        .wait_for_training(&id, "submitted", |t| t["status"] == "submitted")
        .await;
    let request_id = submitted["fal_request_id"].as_str().unwrap().to_string();
    // fal refuses every cancel this process sends.
    app.sim
        .as_ref()
        .unwrap()
        .fail_next_reads(100_000, server_error());
    let answer = cancel(&app, &id).await;
    assert_eq!(answer["status"], "submitted");

    let app = app.restart().await;
    let sim = app.sim.as_ref().unwrap();
    sim.clear_faults();
    let done = app
        .wait_for_training(&id, "cancelled", |t| t["status"] == "cancelled")
        .await;
    assert_eq!(done["error"]["code"], "cancelled");
    assert!(fal_took_cancel(&app, &request_id));
    let avatar_now: Value = app.get_json(&format!("/avatars/{avatar}")).await;
    assert_eq!(avatar_now["status"], "cancelled");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn deleting_an_avatar_mid_submit_cancels_the_request_once_fal_answers(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let sim = app.sim.as_ref().unwrap();
    let avatar = app.avatar_with_photos(10).await;
    stall_next_request(&app);
    sim.fail_next_submits(1, SubmitFault::HoldResponse);
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap();
    // fal has the request; its answer (with the request id) has not reached the service.
    app.eventually("fal to hold the submit's answer", || async {
        match sim.requests().first() {
            Some(request) => Ok(request.request_id.clone()),
            None => Err("no request at fal".into()),
        }
    })
    .await;
    let request_id = sim.requests()[0].request_id.clone();
    let response = app
        .request(Method::DELETE, &format!("/avatars/{avatar}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let training: Value = app.get_json(&format!("/trainings/{id}")).await;
    assert_eq!(training["status"], "cancelled");
    assert!(!fal_took_cancel(&app, &request_id));

    sim.release_held_submits(1);
    app.eventually("the request to be cancelled at fal", || async {
        if fal_took_cancel(&app, &request_id) {
            Ok(())
        } else {
            Err(format!("{:?}", sim.request(&request_id)))
        }
    })
    .await;
    let training: Value = app.get_json(&format!("/trainings/{id}")).await;
    assert_eq!(training["status"], "cancelled");
    assert_eq!(training["fal_request_id"], request_id.as_str());
}

/// When the job's lease ends, as `lease_until` says.
async fn lease_until(pool: &PgPool, id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT lease_until FROM jobs WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_slow_upload_keeps_its_lease_and_no_replica_redoes_it(pool: PgPool) {
    let lease = Duration::from_secs(1);
    let app = TestApp::spawn_with_fal_and(pool.clone(), FalOptions::default(), |settings| {
        settings.jobs.lease = lease;
    })
    .await;
    let replica = app.replica().await;
    let sim = app.sim.as_ref().unwrap();
    let avatar = app.avatar_with_photos(10).await;
    sim.hold_next_uploads(1);
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap().to_string();
    app.eventually("the upload to be under way", || async {
        (sim.uploads_held() == 1)
            .then_some(())
            .ok_or_else(|| "no upload yet".to_string())
    })
    .await;
    let first = lease_until(&pool, &id).await.expect("leased");
    // Outlive the first lease twice over while both replicas look for work to claim.
    app.eventually("the lease to be renewed past two leases", || async {
        match lease_until(&pool, &id).await {
            Some(until) if until > first + chrono::Duration::seconds(2) => Ok(()),
            other => Err(format!("lease until {other:?}, first {first}")),
        }
    })
    .await;
    assert_eq!(uploads_received(&app), 1, "nobody started a second upload");

    sim.release_held_uploads(1);
    app.wait_for_training(&id, "trained", |t| t["status"] == "succeeded")
        .await;
    assert_eq!(uploads_received(&app), 1, "the upload was done once");
    assert_eq!(submits_received(&app), 1);
    drop(replica);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_submit_answered_after_the_lease_ran_out_records_its_request(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool.clone(), FalOptions::default(), |settings| {
        settings.jobs.lease = Duration::from_secs(1);
    })
    .await;
    let sim = app.sim.as_ref().unwrap();
    let avatar = app.avatar_with_photos(10).await;
    // No result and no callback: only the submit's answer can tell the request id.
    stall_next_request(&app);
    sim.fail_next_submits(1, SubmitFault::HoldResponse);
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap().to_string();
    app.eventually("fal to hold the submit's answer", || async {
        (submits_received(&app) == 1)
            .then_some(())
            .ok_or_else(|| "no request at fal".to_string())
    })
    .await;
    // The worker stalls past its lease (a pause, a lost database connection): its lease ends
    // before it can renew it, and the reconciler finds the submit's outcome unknown.
    app.eventually("the submit's outcome to be unknown", || async {
        sqlx::query(
            "UPDATE jobs SET lease_until = now() - interval '1 second'
             WHERE id = $1::uuid AND status = 'uploading'",
        )
        .bind(&id)
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
        let training = app.get_json(&format!("/trainings/{id}")).await;
        if training["status"] == "submit_unknown" {
            Ok(())
        } else {
            Err(training.to_string())
        }
    })
    .await;
    let request_id = sim.requests()[0].request_id.clone();

    sim.release_held_submits(1);
    let done = app
        .wait_for_training(&id, "submitted", |t| t["status"] == "submitted")
        .await;
    assert_eq!(done["fal_request_id"], request_id.as_str());
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_cancel_during_the_submit_that_fal_refuses_after_it_is_retried(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool, FalOptions::default(), |settings| {
        settings.jobs.cancel_retry_interval = Duration::from_millis(20);
    })
    .await;
    let sim = app.sim.as_ref().unwrap();
    let avatar = app.avatar_with_photos(10).await;
    stall_next_request(&app);
    sim.fail_next_submits(1, SubmitFault::HoldResponse);
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap();
    app.eventually("fal to hold the submit's answer", || async {
        (submits_received(&app) == 1)
            .then_some(())
            .ok_or_else(|| "no request at fal".to_string())
    })
    .await;
    let answer = cancel(&app, id).await;
    assert_eq!(answer["status"], "uploading");
    assert_eq!(answer["cancel_requested"], true);
    // The worker's cancel right after the submit's answer fails; the owed cancel is retried.
    sim.fail_next_reads(1, server_error());
    sim.release_held_submits(1);
    let done = app
        .wait_for_training(id, "cancelled", |t| t["status"] == "cancelled")
        .await;
    assert_eq!(done["error"]["code"], "cancelled");
    let request_id = done["fal_request_id"].as_str().unwrap();
    assert!(fal_took_cancel(&app, request_id));
    assert_eq!(cancels_received(&app), 2, "one refused, one taken");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn deleting_an_avatar_while_fal_refuses_the_cancel_cancels_it_later(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool, FalOptions::default(), |settings| {
        settings.jobs.cancel_retry_interval = Duration::from_millis(20);
    })
    .await;
    let sim = app.sim.as_ref().unwrap();
    let avatar = app.avatar_with_photos(10).await;
    stall_next_request(&app);
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap();
    let submitted = app
        .wait_for_training(id, "submitted", |t| t["status"] == "submitted")
        .await;
    let request_id = submitted["fal_request_id"].as_str().unwrap();
    sim.fail_next_reads(2, server_error());
    let response = app
        .request(Method::DELETE, &format!("/avatars/{avatar}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let training: Value = app.get_json(&format!("/trainings/{id}")).await;
    assert_eq!(training["status"], "cancelled");
    app.eventually("the request to be cancelled at fal", || async {
        if fal_took_cancel(&app, request_id) {
            Ok(())
        } else {
            Err(format!("{} cancels so far", cancels_received(&app)))
        }
    })
    .await;
    assert_eq!(cancels_received(&app), 3, "two refused, one taken");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_retried_deadline_cancel_fal_answers_already_completed_ends_with_the_result(
    pool: PgPool,
) {
    let options = FalOptions {
        training_timeout: Duration::from_secs(2),
        ..FalOptions::default()
    };
    let app = TestApp::spawn_with_fal_and(pool, options, |settings| {
        settings.jobs.cancel_retry_interval = Duration::from_millis(20);
    })
    .await;
    let sim = app.sim.as_ref().unwrap();
    let avatar = app.avatar_with_photos(10).await;
    // fal finishes the training at once, but its callback does not arrive before the deadline.
    app.hold_next_callback();
    sim.fail_next_reads(1, server_error());
    let started = app
        .start_training(&avatar, json!({"overrides": {"steps": 5}}))
        .await;
    let id = started["id"].as_str().unwrap();
    let done = app
        .wait_for_training(id, "trained", |t| t["model"].is_object())
        .await;
    assert_eq!(done["status"], "succeeded", "fal's result wins: {done}");
    assert_eq!(
        cancels_received(&app),
        2,
        "one refused, one answered ALREADY_COMPLETED"
    );
}
