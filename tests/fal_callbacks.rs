//! fal callbacks that name no job of ours (kept small, few, and not for long, and applied
//! once a job learns their request id), and callbacks signed for someone else.

use std::time::Duration;

use blackbox::{FalOptions, TestApp};
use fal_sim::{RequestFaults, SubmitFault, WebhookFaults};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(60);

/// Posts `body` signed by fal-sim's key for `user_id`, with `request_id` in the signed header.
async fn post_signed_as(
    app: &TestApp,
    user_id: &str,
    request_id: &str,
    body: &[u8],
) -> reqwest::Response {
    let sim = app.sim.as_ref().unwrap();
    let mut request = app
        .client
        .post(app.url("/webhooks/fal"))
        .body(body.to_vec());
    let now = chrono::Utc::now().timestamp();
    for (name, value) in sim.webhook_headers(request_id, user_id, now, body) {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

async fn post_signed(app: &TestApp, request_id: &str, body: &[u8]) -> Value {
    let response = post_signed_as(app, "sim-user", request_id, body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// What the inbox keeps of unknown requests, by request id.
async fn kept(pool: &PgPool) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT fal_request_id, body FROM webhook_inbox
         WHERE outcome = 'unknown_request' ORDER BY fal_request_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn callback(request_id: &str, padding: usize) -> Vec<u8> {
    json!({"request_id": request_id, "status": "OK", "payload": {"pad": "x".repeat(padding)}})
        .to_string()
        .into_bytes()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn unknown_callbacks_are_kept_small_few_and_not_for_long(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool.clone(), FalOptions::default(), |settings| {
        settings.unknown_callbacks.max_body_bytes = 1024;
        settings.unknown_callbacks.max_kept = 3;
        settings.unknown_callbacks.retention = Duration::from_secs(3600);
        settings.workers.janitor = Duration::from_millis(100);
    })
    .await;

    // A body over the limit is kept without it; small ones whole.
    let big = callback("r-1", 4096);
    assert_eq!(
        post_signed(&app, "r-1", &big).await["outcome"],
        "unknown_request"
    );
    for id in ["r-2", "r-3"] {
        post_signed(&app, id, &callback(id, 10)).await;
    }
    let inbox = kept(&pool).await;
    assert_eq!(inbox.len(), 3);
    assert_eq!(inbox[0].1, json!({"omitted_bytes": big.len()}));
    assert_eq!(inbox[1].1["request_id"], "r-2");

    // With as many kept as allowed, more are acknowledged and not kept.
    for id in ["r-4", "r-5"] {
        assert_eq!(
            post_signed(&app, id, &callback(id, 10)).await["outcome"],
            "unknown_request"
        );
    }
    let ids: Vec<String> = kept(&pool).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["r-1", "r-2", "r-3"]);

    // Past their retention they are forgotten, which makes room again.
    sqlx::query(
        "UPDATE webhook_inbox SET received_at = now() - interval '2 hours'
         WHERE fal_request_id IN ('r-1', 'r-2')",
    )
    .execute(&pool)
    .await
    .unwrap();
    app.eventually("expired unknown callbacks are forgotten", || async {
        let ids: Vec<String> = kept(&pool).await.into_iter().map(|(id, _)| id).collect();
        if ids == ["r-3"] {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
    post_signed(&app, "r-6", &callback("r-6", 10)).await;
    let ids: Vec<String> = kept(&pool).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["r-3", "r-6"]);
}

/// fal called back before the submit's answer (and so the request id) was stored here: the
/// callback names no job yet and is kept; once the answer arrives and the id is stored, the
/// kept callback is applied and the training finishes, without waiting for a status check.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_callback_that_beat_its_request_id_is_applied_once_the_id_is_stored(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool.clone(), FalOptions::default()).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fail_next_submits(1, SubmitFault::HoldResponse);
    sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            webhook: WebhookFaults {
                drop: true,
                ..WebhookFaults::default()
            },
            ..RequestFaults::default()
        },
    );
    let avatar = app.avatar_with_photos(10).await;
    let started = app.start_training(&avatar, json!({})).await;
    let training_id = started["id"].as_str().unwrap().to_string();
    sim.wait_until(DEADLINE, "fal finished the training", |s| {
        s.requests().first().is_some_and(|r| r.output.is_some())
    })
    .await
    .unwrap();
    let request = sim.requests().remove(0);
    let request_id = request.request_id.clone();
    let body = json!({
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK",
        "payload": request.output.unwrap(),
    })
    .to_string();
    let ack = post_signed(&app, &request_id, body.as_bytes()).await;
    assert_eq!(ack["outcome"], "unknown_request", "{ack:#}");
    let training = app.get_json(&format!("/trainings/{training_id}")).await;
    assert_eq!(training["status"], "uploading", "{training:#}");
    assert_eq!(training["fal_request_id"], Value::Null);

    sim.release_held_submits(1);
    let trained = app
        .wait_for_json(&format!("/trainings/{training_id}"), "trained", |t| {
            t["status"] == "succeeded"
        })
        .await;
    assert_eq!(trained["fal_request_id"], request_id.as_str());
    assert!(trained["model"].is_object(), "{trained:#}");
    let (job_id, outcome): (Option<uuid::Uuid>, String) =
        sqlx::query_as("SELECT job_id, outcome FROM webhook_inbox WHERE fal_request_id = $1")
            .bind(&request_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(job_id.map(|id| id.to_string()), Some(training_id));
    assert_eq!(outcome, "applied");
    let statuses = sim
        .received_requests()
        .iter()
        .filter(|r| r.path.contains(&request_id) && r.path.ends_with("/status"))
        .count();
    assert_eq!(statuses, 0, "no status lookup was needed");
}

/// With `FAL_WEBHOOK_USER_ID`, a callback correctly signed for another fal user is refused;
/// the configured user's is taken.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn callbacks_for_another_fal_user_are_refused(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool, FalOptions::default(), |settings| {
        settings.fal_webhook_user_id = Some("our-fal-user".into());
    })
    .await;
    let body = callback("r-1", 0);
    let response = post_signed_as(&app, "someone-else", "r-1", &body).await;
    assert_eq!(response.status(), 403);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "foreign_fal_user", "{problem:#}");
    let response = post_signed_as(&app, "our-fal-user", "r-1", &body).await;
    assert_eq!(response.status(), 200);
    let ack: Value = response.json().await.unwrap();
    assert_eq!(ack["outcome"], "unknown_request");
    let metrics = app
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("avatars_fal_callbacks_total{outcome=\"foreign_user\"} 1")),
        "{metrics}"
    );
}

/// The signed request id header and the body must name the same request.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_callback_whose_header_and_body_name_different_requests_is_refused(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool.clone(), FalOptions::default()).await;
    let response = post_signed_as(&app, "sim-user", "r-1", &callback("r-2", 0)).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "request_id_mismatch", "{problem:#}");
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(inbox, 0, "nothing is recorded");
}

/// Starts `count` trainings that fal finishes without calling back (the test sends the
/// callbacks), and returns each training's id with the body fal would have sent.
async fn finished_without_callbacks(app: &TestApp, count: usize) -> Vec<(String, String, Vec<u8>)> {
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        count as u32,
        None,
        RequestFaults {
            webhook: WebhookFaults {
                drop: true,
                ..WebhookFaults::default()
            },
            ..RequestFaults::default()
        },
    );
    let mut trainings = Vec::new();
    for _ in 0..count {
        let avatar = app.avatar_with_photos(10).await;
        let started = app.start_training(&avatar, json!({})).await;
        trainings.push(started["id"].as_str().unwrap().to_string());
    }
    sim.wait_until(DEADLINE, "fal finished every training", |s| {
        s.requests().len() == count && s.requests().iter().all(|r| r.output.is_some())
    })
    .await
    .unwrap();
    let mut finished = Vec::new();
    for id in trainings {
        let training = app
            .wait_for_json(&format!("/trainings/{id}"), "submitted", |t| {
                t["fal_request_id"].is_string()
            })
            .await;
        let request_id = training["fal_request_id"].as_str().unwrap().to_string();
        let request = sim
            .requests()
            .into_iter()
            .find(|r| r.request_id == request_id)
            .unwrap();
        let body = json!({
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "OK",
            "payload": request.output.unwrap(),
        })
        .to_string()
        .into_bytes();
        finished.push((id, request_id, body));
    }
    finished
}

/// Lets the committers go once `count` callbacks wait for them.
async fn release_when_queued(
    app: &TestApp,
    hold: service::callback_batch::CommitHold,
    count: usize,
) {
    app.eventually("the callbacks queue behind the held committers", || async {
        match app.running().callbacks.queued() {
            queued if queued == count => Ok(()),
            queued => Err(format!("{queued} queued")),
        }
    })
    .await;
    drop(hold);
}

/// The service's callback batches so far: (batches, callbacks in them, batches timed, their
/// seconds).
async fn batches(app: &TestApp) -> (f64, f64, f64, f64) {
    let scrape = app.scrape().await;
    (
        scrape.sum("avatars_fal_callback_batch_size_count", &[]),
        scrape.sum("avatars_fal_callback_batch_size_sum", &[]),
        scrape.sum("avatars_fal_callback_batch_duration_seconds_count", &[]),
        scrape.sum("avatars_fal_callback_batch_duration_seconds_sum", &[]),
    )
}

/// Waits until the training succeeded (its LoRA in our custody).
async fn wait_trained(app: &TestApp, training: &str) {
    app.wait_for_json(&format!("/trainings/{training}"), "succeeded", |t| {
        t["status"] == "succeeded"
    })
    .await;
}

/// How many times each training entered `succeeded`.
async fn successes(pool: &PgPool, training: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = $1::uuid AND to_status = 'succeeded'",
    )
    .bind(training)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Callbacks that arrive while the committers are busy are applied in one transaction, each
/// answered after it; a duplicate inside the batch is answered like any duplicate.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn callbacks_that_arrive_together_commit_together(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool.clone(), FalOptions::default()).await;
    let finished = finished_without_callbacks(&app, 2).await;
    let (batches_before, callbacks_before, timed_before, seconds_before) = batches(&app).await;

    let hold = app.running().callbacks.hold().await;
    let sending = join_all(
        finished
            .iter()
            .chain(std::iter::once(&finished[0]))
            .map(|(_, request_id, body)| post_signed(&app, request_id, body)),
    );
    let (acks, ()) = tokio::join!(sending, release_when_queued(&app, hold, 3));
    let mut outcomes: Vec<&str> = acks
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["applied", "applied", "duplicate"]);
    let (batches_after, callbacks_after, timed_after, seconds_after) = batches(&app).await;
    assert_eq!(batches_after - batches_before, 1.0, "one batch");
    assert_eq!(
        callbacks_after - callbacks_before,
        3.0,
        "of three callbacks"
    );
    assert_eq!(timed_after - timed_before, 1.0, "its transaction timed");
    assert!(seconds_after > seconds_before, "and it took time");
    for (training, _, _) in &finished {
        wait_trained(&app, training).await;
        assert_eq!(successes(&pool, training).await, 1);
    }

    // The batch plans its statements its own way only inside its transaction: every pooled
    // connection, the batch's among them, plans as configured again.
    let service_pool = app.running().store.pool();
    let mut connections = Vec::new();
    for _ in 0..service_pool.size() {
        connections.push(service_pool.acquire().await.unwrap());
    }
    for connection in &mut connections {
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(&mut **connection)
            .await
            .unwrap();
        assert_eq!(mode, "auto");
    }
}

/// A batch that fails is applied callback by callback: the callback that cannot be stored
/// fails alone (fal retries it), the others of its batch are applied.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn one_bad_callback_does_not_fail_its_batch(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool.clone(), FalOptions::default()).await;
    let finished = finished_without_callbacks(&app, 2).await;
    // The database refuses the inbox row of one request (as it would a row it cannot store).
    let poisoned = finished[1].1.clone();
    sqlx::query(&format!(
        "CREATE FUNCTION refuse_poisoned() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.fal_request_id = '{poisoned}' THEN RAISE EXCEPTION 'poisoned callback'; END IF;
           RETURN NEW;
         END $$"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_poisoned BEFORE INSERT ON webhook_inbox
         FOR EACH ROW EXECUTE FUNCTION refuse_poisoned()",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (batches_before, ..) = batches(&app).await;

    let hold = app.running().callbacks.hold().await;
    let sending = join_all(
        finished
            .iter()
            .map(|(_, request_id, body)| post_signed_as(&app, "sim-user", request_id, body)),
    );
    let (responses, ()) = tokio::join!(sending, release_when_queued(&app, hold, 2));
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses[0], 200);
    assert!(
        statuses[1] >= 500,
        "the poisoned callback fails: {statuses:?}"
    );
    assert_eq!(
        batches(&app).await.0 - batches_before,
        1.0,
        "they were one batch"
    );
    wait_trained(&app, &finished[0].0).await;
    assert_eq!(successes(&pool, &finished[0].0).await, 1);
    let refused = app.get_json(&format!("/trainings/{}", finished[1].0)).await;
    assert_eq!(refused["status"], "submitted", "{refused:#}");

    // fal retries the one that failed; once it can be stored, it is applied.
    sqlx::query("DROP TRIGGER refuse_poisoned ON webhook_inbox")
        .execute(&pool)
        .await
        .unwrap();
    let (training, request_id, body) = &finished[1];
    let ack = post_signed(&app, request_id, body).await;
    assert_eq!(ack["outcome"], "applied", "{ack:#}");
    wait_trained(&app, training).await;
    assert_eq!(successes(&pool, training).await, 1);
}

/// `FAL_CALLBACK_BATCH_MAX=1` commits every callback alone, however many wait.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_batch_limit_of_one_commits_each_callback_alone(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool.clone(), FalOptions::default(), |settings| {
        settings.callback_batches.max_callbacks = 1;
    })
    .await;
    let finished = finished_without_callbacks(&app, 2).await;
    let (batches_before, callbacks_before, ..) = batches(&app).await;
    let hold = app.running().callbacks.hold().await;
    let sending = join_all(
        finished
            .iter()
            .map(|(_, request_id, body)| post_signed(&app, request_id, body)),
    );
    let (acks, ()) = tokio::join!(sending, release_when_queued(&app, hold, 2));
    for ack in acks {
        assert_eq!(ack["outcome"], "applied", "{ack:#}");
    }
    let (batches_after, callbacks_after, ..) = batches(&app).await;
    assert_eq!(batches_after - batches_before, 2.0, "two batches");
    assert_eq!(
        callbacks_after - callbacks_before,
        2.0,
        "of one callback each"
    );
}

/// Two different callbacks for one job in one batch apply in turn: the first finishes the
/// training, the second finds it finished and is recorded as ignored, in the job's history and
/// in the inbox.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn two_callbacks_for_one_job_in_one_batch_apply_in_turn(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool.clone(), FalOptions::default()).await;
    let finished = finished_without_callbacks(&app, 2).await;
    let (training, request_id, body) = &finished[0];
    // The same result, written differently: not a duplicate of the first delivery.
    let mut again: Value = serde_json::from_slice(body).unwrap();
    again["retried"] = json!(true);
    let again = again.to_string().into_bytes();
    let (batches_before, ..) = batches(&app).await;

    let hold = app.running().callbacks.hold().await;
    let sending = join_all([
        post_signed(&app, request_id, body),
        post_signed(&app, request_id, &again),
        post_signed(&app, &finished[1].1, &finished[1].2),
    ]);
    let (acks, ()) = tokio::join!(sending, release_when_queued(&app, hold, 3));
    assert_eq!(batches(&app).await.0 - batches_before, 1.0, "one batch");
    let mut outcomes: Vec<&str> = acks[..2]
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["applied", "ignored"], "{acks:#?}");
    assert_eq!(acks[2]["outcome"], "applied", "{:#}", acks[2]);

    let history: Vec<(bool, Option<String>)> = sqlx::query_as(
        "SELECT applied, to_status FROM job_events
          WHERE job_id = $1::uuid AND cause LIKE 'fal webhook%' ORDER BY id",
    )
    .bind(training)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history[0].0, "the first callback applied: {history:?}");
    assert_eq!(history[1], (false, None), "the second changed nothing");
    let inbox: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM webhook_inbox WHERE fal_request_id = $1 ORDER BY outcome",
    )
    .bind(request_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(inbox, ["applied", "ignored"]);
    for (training, _, _) in &finished {
        wait_trained(&app, training).await;
        assert_eq!(successes(&pool, training).await, 1);
    }
}
