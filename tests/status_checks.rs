//! Status lookups are a safety net for fal's webhooks, live progress is fetched only for
//! watched jobs, and each job's deadline fits its own expected duration.
//!
//! These tests read trainings through the avatar's list (`GET /avatars/{id}/trainings`), which
//! does not watch them: a `GET /trainings/{id}` would (and so would ask fal for progress).

use std::time::{Duration, Instant};

use blackbox::{problem, FalOptions, TestApp};
use chrono::{DateTime, Utc};
use fal_sim::{RequestFaults, WebhookFaults};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The portrait trainer's expected seconds per step (`GET /presets` shows the same).
const PORTRAIT_SECONDS_PER_STEP: f64 = 0.36;
/// How long a test measures what a watcher (or nobody) causes.
const WINDOW: Duration = Duration::from_millis(3500);

/// An app whose safety-net checks and progress lookups are spaced by `interval`, with
/// `grace` after a job's estimate before its webhook counts as overdue.
async fn app_with(
    pool: PgPool,
    interval: Duration,
    grace: Duration,
    time_factor: f64,
    configure: impl FnOnce(&mut api::Settings),
) -> TestApp {
    let mut options = FalOptions {
        status_check_interval: interval,
        ..FalOptions::default()
    };
    options.sim.time_factor = time_factor;
    TestApp::spawn_with_fal_and(pool, options, |settings| {
        settings.jobs.webhook_grace = grace;
        configure(settings);
    })
    .await
}

/// The training as the avatar's list shows it (reading it this way watches nothing).
async fn listed(app: &TestApp, avatar: &str) -> Value {
    let page = app.get_json(&format!("/avatars/{avatar}/trainings")).await;
    page["items"][0].clone()
}

async fn wait_listed(
    app: &TestApp,
    avatar: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    app.eventually(what, || async {
        let training = listed(app, avatar).await;
        if done(&training) {
            Ok(training)
        } else {
            Err(training.to_string())
        }
    })
    .await
}

/// Status lookups fal-sim received for the request.
fn status_lookups(app: &TestApp, request_id: &str) -> usize {
    app.sim
        .as_ref()
        .unwrap()
        .received_requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(request_id) && r.path.contains("/status"))
        .count()
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .unwrap()
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_webhook_in_time_means_fal_is_never_asked(pool: PgPool) {
    let interval = Duration::from_secs(1);
    let grace = Duration::from_secs(3);
    // 10 steps: expected 3.6 s. fal-sim runs them in 10 x 0.6 s x 0.4 = 2.4 s, more than
    // twice the check interval, and calls back.
    let app = app_with(pool, interval, grace, 0.4, |_| {}).await;
    let avatar = app.avatar_with_photos(10).await;
    let started = app
        .start_training(&avatar, json!({"overrides": {"steps": 10}}))
        .await;
    assert_eq!(started["estimated_duration_seconds"], 4, "{started:#}");

    let done = wait_listed(&app, &avatar, "trained", |t| t["model"].is_object()).await;
    assert_eq!(done["status"], "succeeded");
    let request_id = done["fal_request_id"].as_str().unwrap();
    let report = app.sim.as_ref().unwrap().request(request_id).unwrap();
    assert_eq!(report.webhook.outcome, fal_sim::WebhookOutcome::Delivered);

    // fal ran it for more than two intervals, and was never asked how it was going.
    let submitted = time(&done["submitted_at"]);
    let ran = seconds_between(submitted, time(&done["finished_at"]));
    assert!(ran >= 2.0 * interval.as_secs_f64(), "ran {ran} s");
    assert_eq!(status_lookups(&app, request_id), 0);

    // The deadline was counted from the submission: 2 x 3.6 s + the grace.
    let deadline = seconds_between(submitted, time(&done["deadline_at"]));
    assert!(
        (deadline - 10.2).abs() < 0.5,
        "deadline {deadline} s after submission"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_lost_webhook_is_looked_up_once_it_is_overdue(pool: PgPool) {
    let interval = Duration::from_secs(1);
    let grace = Duration::from_secs(1);
    let app = app_with(pool, interval, grace, 0.1, |_| {}).await;
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
    let avatar = app.avatar_with_photos(10).await;
    // 5 steps: expected 1.8 s, so overdue 2.8 s after submission. fal-sim is done in 0.3 s.
    app.start_training(&avatar, json!({"overrides": {"steps": 5}}))
        .await;
    let overdue_after = 5.0 * PORTRAIT_SECONDS_PER_STEP + grace.as_secs_f64();

    // What the request log showed, and when, until the job finished by a lookup.
    let seen: std::sync::Mutex<Vec<(DateTime<Utc>, usize)>> = Default::default();
    let done = app
        .eventually("trained by a status lookup", || {
            let (seen, app, avatar) = (&seen, &app, &avatar);
            async move {
                let training = listed(app, avatar).await;
                if let Some(request_id) = training["fal_request_id"].as_str() {
                    let lookups = status_lookups(app, request_id);
                    seen.lock().unwrap().push((Utc::now(), lookups));
                }
                if training["model"].is_object() {
                    Ok(training)
                } else {
                    Err(training.to_string())
                }
            }
        })
        .await;
    let request_id = done["fal_request_id"].as_str().unwrap();
    let report = app.sim.as_ref().unwrap().request(request_id).unwrap();
    assert_eq!(report.webhook.outcome, fal_sim::WebhookOutcome::Dropped);
    assert!(status_lookups(&app, request_id) >= 1);

    // No lookup before the webhook was overdue, though a whole interval passed twice.
    let submitted = time(&done["submitted_at"]);
    let seen = seen.into_inner().unwrap();
    let first_seen = seen
        .iter()
        .find(|(_, lookups)| *lookups > 0)
        .map(|(at, _)| seconds_between(submitted, *at))
        .expect("a lookup was seen");
    assert!(
        first_seen >= overdue_after - 0.1,
        "first lookup seen {first_seen} s after submission"
    );
    let quiet_until = seen
        .iter()
        .filter(|(_, lookups)| *lookups == 0)
        .map(|(at, _)| seconds_between(submitted, *at))
        .fold(0.0, f64::max);
    assert!(
        quiet_until >= 2.0 * interval.as_secs_f64(),
        "no lookup seen until {quiet_until} s"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn later_lookups_back_off_up_to_the_maximum_interval(pool: PgPool) {
    let interval = Duration::from_millis(500);
    let grace = Duration::from_millis(500);
    let app = app_with(pool, interval, grace, 0.1, |settings| {
        settings.jobs.status_check_max_interval = Duration::from_secs(2);
        // A deadline far enough away to watch several lookups.
        settings.jobs.deadline_factor = 10;
    })
    .await;
    // fal never finishes it.
    app.sim.as_ref().unwrap().fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let avatar = app.avatar_with_photos(10).await;
    // 10 steps: expected 3.6 s, overdue 4.1 s after submission.
    app.start_training(&avatar, json!({"overrides": {"steps": 10}}))
        .await;
    let submitted = wait_listed(&app, &avatar, "submitted", |t| t["status"] == "submitted").await;
    let request_id = submitted["fal_request_id"].as_str().unwrap().to_string();

    // When each of the first five lookups was first seen.
    let mut seen: Vec<Instant> = Vec::new();
    let started = Instant::now();
    app.eventually("five lookups", || {
        let lookups = status_lookups(&app, &request_id);
        while seen.len() < lookups.min(5) {
            seen.push(Instant::now());
        }
        async move {
            if lookups >= 5 {
                Ok(())
            } else {
                Err(format!("{lookups} lookups"))
            }
        }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    let gaps: Vec<f64> = seen
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    // 0.5 s, then doubling, at most 2 s: 0.5, 1, 2, 2.
    for (gap, expected) in gaps.iter().zip([0.5, 1.0, 2.0, 2.0]) {
        assert!(
            *gap >= expected - 0.25 && *gap <= expected + 1.0,
            "gaps {gaps:?}"
        );
    }
    let training = listed(&app, &avatar).await;
    assert_eq!(
        training["status"], "submitted",
        "still at fal: {training:#}"
    );
}

/// Counts the lookups made while `watch` runs for [`WINDOW`], and checks they were spaced by
/// at least an interval (less the time it takes to see one).
async fn lookups_while<F, Fut>(
    app: &TestApp,
    request_id: &str,
    interval: Duration,
    mut watch: F,
) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = status_lookups(app, request_id);
    let start = Instant::now();
    let mut increments: Vec<Instant> = Vec::new();
    let mut last = before;
    while start.elapsed() < WINDOW {
        watch().await;
        let now = status_lookups(app, request_id);
        for _ in last..now {
            increments.push(Instant::now());
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for pair in increments.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= interval.mul_f64(0.75),
            "two lookups {gap:?} apart with a {interval:?} interval"
        );
    }
    let made = last - before;
    let most = (WINDOW.as_secs_f64() / interval.as_secs_f64()).floor() as usize + 1;
    assert!(made <= most, "{made} lookups in {WINDOW:?}");
    made
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn progress_is_looked_up_only_while_someone_watches_at_most_once_per_interval(pool: PgPool) {
    let interval = Duration::from_secs(1);
    let app = app_with(pool, interval, Duration::from_secs(60), 0.1, |_| {}).await;
    let replica = app.replica().await;
    // fal keeps it queued until released.
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let avatar = app.avatar_with_photos(10).await;
    // 10 steps: expected 3.6 s, so its webhook is not overdue for a minute.
    let started = app
        .start_training(&avatar, json!({"overrides": {"steps": 10}}))
        .await;
    let id = started["id"].as_str().unwrap().to_string();
    let submitted = wait_listed(&app, &avatar, "submitted", |t| t["status"] == "submitted").await;
    let request_id = submitted["fal_request_id"].as_str().unwrap().to_string();

    // Callers GET the training through both replicas, all the time: each replica's reconciler
    // may look it up, but together they ask fal at most once per interval.
    let watched = lookups_while(&app, &request_id, interval, || async {
        for instance in [&app, &replica] {
            let training = instance.get_json(&format!("/trainings/{id}")).await;
            assert_eq!(training["status"], "submitted");
        }
    })
    .await;
    assert!(watched >= 2, "{watched} lookups while watched");
    let shown = listed(&app, &avatar).await;
    assert!(shown["queue_position"].is_number(), "{shown:#}");

    // Nobody watches: fal is not asked (its webhook is not overdue for an hour).
    let unwatched = lookups_while(&app, &request_id, interval, || async {}).await;
    assert!(unwatched <= 1, "{unwatched} lookups with nobody watching");
    let settled = status_lookups(&app, &request_id);
    let quiet = lookups_while(&app, &request_id, interval, || async {}).await;
    assert_eq!(quiet, 0, "lookups with nobody watching");
    assert_eq!(status_lookups(&app, &request_id), settled);

    // An event stream filtered to the avatar watches it while it is open.
    let stream = reqwest::Client::new()
        .get(replica.url(&format!("/events?avatar_id={avatar}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let streamed = lookups_while(&app, &request_id, interval, || async {}).await;
    assert!(streamed >= 2, "{streamed} lookups while a stream watched");
    drop(stream);

    // Once fal finishes, its webhook ends the training as usual.
    sim.release(&request_id);
    let done = wait_listed(&app, &avatar, "trained", |t| t["model"].is_object()).await;
    assert_eq!(done["status"], "succeeded");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_training_longer_than_the_timeout_is_refused_before_anything_is_paid(pool: PgPool) {
    let app = app_with(
        pool,
        Duration::from_secs(1),
        Duration::from_secs(60),
        0.1,
        |_| {},
    )
    .await;
    let avatar = app.avatar_with_photos(10).await;
    let train = |body: Value| {
        app.request(Method::POST, &format!("/avatars/{avatar}/train"))
            .json(&body)
            .send()
    };

    // 10000 steps are expected to take an hour, past FAL_TRAINING_TIMEOUT (1800 s).
    let (status, body) =
        problem(train(json!({"overrides": {"steps": 10000}})).await.unwrap()).await;
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["code"], "estimate_exceeds_timeout");
    assert_eq!(body["errors"][0]["field"], "overrides.steps", "{body:#}");
    assert_eq!(body["estimated_duration_seconds"], 3600);
    assert_eq!(body["timeout_seconds"], 1800);
    // One step past the edge (5000 steps are exactly 1800 s).
    let (status, body) = problem(train(json!({"overrides": {"steps": 5001}})).await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("estimate_exceeds_timeout"))
    );

    // Nothing was stored, nothing reached fal, the avatar is as it was.
    let page = app.get_json(&format!("/avatars/{avatar}/trainings")).await;
    assert_eq!(page["items"], json!([]));
    let sent = app.sim.as_ref().unwrap().received_requests();
    assert!(
        !sent.iter().any(|r| r.path.contains("trainer")),
        "nothing reached fal: {sent:?}"
    );
    let avatar_now = app.get_json(&format!("/avatars/{avatar}")).await;
    assert_eq!(avatar_now["status"], "ready", "{avatar_now:#}");

    // At the edge it is accepted, and shows its estimate.
    let accepted = app
        .start_training(&avatar, json!({"overrides": {"steps": 5000}}))
        .await;
    assert_eq!(accepted["estimated_duration_seconds"], 1800);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_preset_longer_than_the_timeout_names_the_preset(pool: PgPool) {
    // Portrait quality is expected to take 15 min, balanced 6 min.
    let options = FalOptions {
        training_timeout: Duration::from_secs(600),
        ..FalOptions::default()
    };
    let app = TestApp::spawn_with_fal(pool, options).await;
    let avatar = app.avatar_with_photos(10).await;
    let (status, body) = problem(
        app.request(Method::POST, &format!("/avatars/{avatar}/train"))
            .json(&json!({"preset": "quality"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["code"], "estimate_exceeds_timeout");
    assert_eq!(body["errors"][0]["field"], "preset");
    let accepted = app
        .start_training(&avatar, json!({"preset": "balanced"}))
        .await;
    assert_eq!(accepted["estimated_duration_seconds"], 360);
    // The presets callers choose from show the same estimates.
    let presets = app.get_json("/presets").await;
    let quality = presets["training"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["trainer"] == "portrait" && p["preset"] == "quality")
        .unwrap()
        .clone();
    assert_eq!(quality["typical_duration_seconds"], 900);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_short_training_times_out_by_its_own_deadline_counted_from_submission(pool: PgPool) {
    let grace = Duration::from_secs(1);
    let app = app_with(pool, Duration::from_secs(1), grace, 0.1, |_| {}).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let avatar = app.avatar_with_photos(10).await;
    // 5 steps: expected 1.8 s; deadline 2 x 1.8 s + 1 s = 4.6 s after submission, long before
    // FAL_TRAINING_TIMEOUT (1800 s).
    let started = app
        .start_training(&avatar, json!({"overrides": {"steps": 5}}))
        .await;
    assert_eq!(started["estimated_duration_seconds"], 2);
    let submitted = wait_listed(&app, &avatar, "submitted", |t| t["status"] == "submitted").await;
    let submitted_at = time(&submitted["submitted_at"]);
    let deadline = seconds_between(submitted_at, time(&submitted["deadline_at"]));
    assert!(
        (deadline - 4.6).abs() < 0.5,
        "deadline {deadline} s after submission"
    );

    let done = wait_listed(&app, &avatar, "timed out", |t| t["status"] == "timed_out").await;
    assert_eq!(done["error"]["code"], "training_timeout");
    let lasted = seconds_between(submitted_at, time(&done["finished_at"]));
    assert!(
        (4.5..30.0).contains(&lasted),
        "timed out {lasted} s after submission"
    );
    let report = sim
        .request(done["fal_request_id"].as_str().unwrap())
        .unwrap();
    assert!(report.cancel_requested, "cancelled on fal");
}
