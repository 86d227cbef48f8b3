//! Retention: the janitor deletes rows past their horizon and keeps everything still needed;
//! blobs whose deletion keeps failing are retried later without holding up the others.

use std::collections::BTreeSet;
use std::time::Duration;

use blackbox::TestApp;
use sqlx::PgPool;
use uuid::Uuid;

/// The application layer on `pool` with `settings`, its blobs in `blobs_dir`, and no worker
/// running: the test runs the janitor's rounds itself.
fn service_on(
    pool: &PgPool,
    blobs_dir: &std::path::Path,
    settings: service::Settings,
) -> service::Service {
    service::Service::new(
        store::Store::new(pool.clone()),
        store::BlobStore::local(blobs_dir).unwrap(),
        settings,
        None,
        api::event_bodies::render,
    )
    .unwrap()
}

/// Every horizon one hour, except events with a failed delivery (two hours).
fn hour_horizons() -> service::Settings {
    let mut settings = service::Settings::default();
    let hour = Duration::from_secs(3600);
    settings.retention.delivered_events = hour;
    settings.retention.failed_events = 2 * hour;
    settings.retention.fal_callbacks = hour;
    settings.retention.idempotency_keys = hour;
    settings.retention.job_events = hour;
    settings.retention.expired_secrets = hour;
    settings.unknown_callbacks.retention = hour;
    // Small batches, so every trim takes several.
    settings.retention.batch_rows = 2;
    settings
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(sql).execute(pool).await.unwrap();
}

async fn names(pool: &PgPool, sql: &str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// A sequenced event named `name` (in its data) created `age` ago, with one delivery per
/// status given, each with one attempt.
async fn event(
    pool: &PgPool,
    tenant: Uuid,
    endpoints: &[Uuid],
    name: &str,
    age: &str,
    deliveries: &[&str],
) {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox_events (id, tenant_id, event_type, data, payload, position, created_at)
         VALUES ($1, $2, 'training.succeeded', jsonb_build_object('name', $3::text), '{}',
                 nextval('outbox_position_seq'), now() - $4::interval)",
    )
    .bind(id)
    .bind(tenant)
    .bind(name)
    .bind(age)
    .execute(pool)
    .await
    .unwrap();
    for (endpoint, status) in endpoints.iter().zip(deliveries) {
        let delivery = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, event_position,
                                             status, attempt_count)
             SELECT $1, $2, $3, id, position, $5, 1 FROM outbox_events WHERE id = $4",
        )
        .bind(delivery)
        .bind(tenant)
        .bind(endpoint)
        .bind(id)
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, number, outcome, finished_at)
             VALUES ($1, 1, 'failed', now())",
        )
        .bind(delivery)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// A job (a training) named by its webhook token, finished `finished` ago (or running).
async fn job(pool: &PgPool, tenant: Uuid, name: &str, finished: Option<&str>) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, kind, status, endpoint, webhook_token, finished_at)
         VALUES ($1, $2, 'training', CASE WHEN $4::interval IS NULL THEN 'in_progress' ELSE 'succeeded' END,
                 'fal-ai/flux-lora-portrait-trainer', $3, now() - $4::interval)",
    )
    .bind(id)
    .bind(tenant)
    .bind(name)
    .bind(finished)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn job_event(pool: &PgPool, job: Uuid, name: &str, age: &str) {
    sqlx::query(
        "INSERT INTO job_events (job_id, event, applied, cause, created_at)
         VALUES ($1, 'status_checked', true, $2, now() - $3::interval)",
    )
    .bind(job)
    .bind(name)
    .bind(age)
    .execute(pool)
    .await
    .unwrap();
}

async fn callback(pool: &PgPool, job: Option<Uuid>, name: &str, age: &str) {
    sqlx::query(
        "INSERT INTO webhook_inbox (fal_request_id, body_sha256, job_id, fal_status, outcome, body, received_at)
         VALUES ($1, 'digest', $2, 'OK', CASE WHEN $2::uuid IS NULL THEN 'unknown_request' ELSE 'applied' END,
                 '{}', now() - $3::interval)",
    )
    .bind(name)
    .bind(job)
    .bind(age)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_janitor_trims_each_table_past_its_horizon_and_keeps_what_is_still_needed(
    pool: PgPool,
) {
    let tenant = Uuid::now_v7();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'tenant-a')")
        .bind(tenant)
        .execute(&pool)
        .await
        .unwrap();
    let endpoints = [Uuid::now_v7(), Uuid::now_v7()];
    for (endpoint, enabled) in endpoints.iter().zip([true, false]) {
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, enabled) VALUES ($1, $2, 'https://example.com/hook', $3)",
        )
        .bind(endpoint)
        .bind(tenant)
        .bind(enabled)
        .execute(&pool)
        .await
        .unwrap();
    }

    // Events: delivered everywhere and old -> trimmed; pending anywhere (the second endpoint is
    // disabled) -> kept; failed -> kept for the longer horizon; recent -> kept.
    let both = |a, b| [a, b];
    event(
        &pool,
        tenant,
        &endpoints,
        "delivered-old",
        "90 minutes",
        &both("delivered", "delivered"),
    )
    .await;
    event(
        &pool,
        tenant,
        &endpoints,
        "delivered-old-2",
        "100 minutes",
        &both("delivered", "delivered"),
    )
    .await;
    event(
        &pool,
        tenant,
        &endpoints,
        "no-endpoint-old",
        "90 minutes",
        &[],
    )
    .await;
    event(
        &pool,
        tenant,
        &endpoints,
        "pending-old",
        "10 days",
        &both("delivered", "pending"),
    )
    .await;
    event(
        &pool,
        tenant,
        &endpoints,
        "failed-old",
        "90 minutes",
        &both("delivered", "failed"),
    )
    .await;
    event(
        &pool,
        tenant,
        &endpoints,
        "failed-older",
        "3 hours",
        &both("failed", "delivered"),
    )
    .await;
    event(
        &pool,
        tenant,
        &endpoints,
        "delivered-recent",
        "10 minutes",
        &both("delivered", "delivered"),
    )
    .await;

    // Jobs and what hangs off them.
    let done_long_ago = job(&pool, tenant, "done-long-ago", Some("3 hours")).await;
    let done_recently = job(&pool, tenant, "done-recently", Some("10 minutes")).await;
    let running = job(&pool, tenant, "running", None).await;
    job_event(&pool, done_long_ago, "done-long-ago-1", "4 hours").await;
    job_event(&pool, done_long_ago, "done-long-ago-2", "3 hours").await;
    job_event(&pool, done_long_ago, "done-long-ago-late", "10 minutes").await;
    job_event(&pool, done_recently, "done-recently", "5 hours").await;
    job_event(&pool, running, "running", "5 hours").await;
    callback(&pool, Some(done_long_ago), "cb-done-old", "3 hours").await;
    callback(&pool, Some(done_long_ago), "cb-done-recent", "10 minutes").await;
    callback(
        &pool,
        Some(done_recently),
        "cb-done-recently-old",
        "2 hours",
    )
    .await;
    callback(&pool, Some(running), "cb-running-old", "5 hours").await;
    callback(&pool, None, "cb-unknown-old", "2 hours").await;
    callback(&pool, None, "cb-unknown-recent", "10 minutes").await;

    // Idempotency keys: done and old -> trimmed; in flight -> kept however old.
    for (key, state, age) in [
        ("done-old", "done", "2 hours"),
        ("done-old-2", "done", "3 hours"),
        ("done-old-3", "done", "4 hours"),
        ("done-recent", "done", "10 minutes"),
        ("in-flight-old", "in_flight", "5 hours"),
    ] {
        sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, key, request_hash, state, created_at)
             VALUES ($1, $2, 'h', $3, now() - $4::interval)",
        )
        .bind(tenant)
        .bind(key)
        .bind(state)
        .bind(age)
        .execute(&pool)
        .await
        .unwrap();
    }

    // Secrets: expired long ago -> trimmed; expired lately, inside the overlap, current -> kept.
    for (secret, expires) in [
        ("expired-long-ago", Some("-3 hours")),
        ("expired-lately", Some("-10 minutes")),
        ("in-overlap", Some("1 hour")),
        ("current", None),
    ] {
        sqlx::query(
            "INSERT INTO webhook_endpoint_secrets (id, endpoint_id, secret, expires_at)
             VALUES ($1, $2, $3, now() + $4::interval)",
        )
        .bind(Uuid::now_v7())
        .bind(endpoints[0])
        .bind(secret)
        .bind(expires)
        .execute(&pool)
        .await
        .unwrap();
    }

    let blobs = tempfile::tempdir().unwrap();
    let janitor = service_on(&pool, blobs.path(), hour_horizons());
    service::workers::janitor::run_once(&janitor).await;

    assert_eq!(
        names(&pool, "SELECT data->>'name' FROM outbox_events").await,
        set(&["pending-old", "failed-old", "delivered-recent"])
    );
    let (deliveries, attempts): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_deliveries), (SELECT count(*) FROM webhook_attempts)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (deliveries, attempts),
        (6, 6),
        "the trimmed events' deliveries and attempts went with them"
    );
    assert_eq!(
        names(&pool, "SELECT cause FROM job_events").await,
        set(&["done-long-ago-late", "done-recently", "running"])
    );
    assert_eq!(
        names(&pool, "SELECT fal_request_id FROM webhook_inbox").await,
        set(&["cb-done-recent", "cb-running-old", "cb-unknown-recent"])
    );
    assert_eq!(
        names(&pool, "SELECT key FROM idempotency_keys").await,
        set(&["done-recent", "in-flight-old"])
    );
    assert_eq!(
        names(&pool, "SELECT secret FROM webhook_endpoint_secrets").await,
        set(&["expired-lately", "in-overlap", "current"])
    );

    let metrics = janitor.metrics.render();
    for (table, rows) in [
        ("outbox_events", 4),
        ("job_events", 2),
        ("webhook_inbox", 2),
        ("webhook_inbox_unknown", 1),
        ("idempotency_keys", 3),
        ("webhook_endpoint_secrets", 1),
    ] {
        let line = format!("avatars_retention_trimmed_rows_total{{table=\"{table}\"}} {rows}\n");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }

    // Nothing more is past its horizon: a second round deletes nothing.
    service::workers::janitor::run_once(&janitor).await;
    assert_eq!(
        names(&pool, "SELECT data->>'name' FROM outbox_events").await,
        set(&["pending-old", "failed-old", "delivered-recent"])
    );
    assert_eq!(
        names(&pool, "SELECT key FROM idempotency_keys").await.len(),
        2
    );
}

/// Queues blob deletions: `failing` keys first (each a directory, which the local store
/// cannot delete as a blob), then one good key whose blob exists.
async fn queue_blob_deletions(
    pool: &PgPool,
    blobs: &store::BlobStore,
    dir: &std::path::Path,
    failing: usize,
) -> Vec<String> {
    let mut keys = Vec::new();
    for n in 0..failing {
        let key = format!("stuck/{n:03}");
        std::fs::create_dir_all(dir.join(&key).join("inside")).unwrap();
        keys.push(key);
    }
    sqlx::query(
        "INSERT INTO blob_deletions (blob_key, requested_at, next_attempt_at)
         SELECT key, now() - interval '1 hour', now() - interval '1 hour' FROM unnest($1::text[]) key",
    )
    .bind(&keys)
    .execute(pool)
    .await
    .unwrap();
    blobs
        .put_bytes("tenants/good/photo", bytes::Bytes::from_static(b"bytes"))
        .await
        .unwrap();
    exec(
        pool,
        "INSERT INTO blob_deletions (blob_key) VALUES ('tenants/good/photo')",
    )
    .await;
    keys
}

async fn queued(pool: &PgPool) -> Vec<(String, i32, bool)> {
    sqlx::query_as(
        "SELECT blob_key, attempts, next_attempt_at > now() + interval '20 seconds'
         FROM blob_deletions ORDER BY blob_key",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn blobs_that_fail_to_delete_do_not_hold_up_the_others_and_are_retried_with_backoff(
    pool: PgPool,
) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = store::BlobStore::local(dir.path()).unwrap();
    // More failing keys than the janitor claims at once, all due before the good one.
    let failing = queue_blob_deletions(&pool, &blobs, dir.path(), 150).await;
    let mut settings = service::Settings::default();
    settings.retention.blob_retry_base = Duration::from_secs(30);
    settings.retention.blob_retry_max = Duration::from_secs(90);
    let janitor = service_on(&pool, dir.path(), settings);

    service::workers::janitor::run_once(&janitor).await;
    assert!(!blobs.exists("tenants/good/photo").await.unwrap());
    let after_one: Vec<_> = queued(&pool).await;
    assert_eq!(after_one.len(), 150, "only the good key left the queue");
    assert!(
        after_one
            .iter()
            .all(|(_, attempts, later)| *attempts == 1 && *later),
        "each failing key was tried once and waits: {after_one:?}"
    );
    let error: String = sqlx::query_scalar("SELECT last_error FROM blob_deletions LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!error.is_empty());
    assert!(janitor
        .metrics
        .render()
        .contains("avatars_blob_deletion_failures_total 150\n"));

    // Not due yet: another round leaves them alone.
    service::workers::janitor::run_once(&janitor).await;
    assert!(queued(&pool)
        .await
        .iter()
        .all(|(_, attempts, _)| *attempts == 1));

    // Their wait has passed; half of them can be deleted now.
    exec(&pool, "UPDATE blob_deletions SET next_attempt_at = now()").await;
    for key in failing.iter().step_by(2) {
        std::fs::remove_dir_all(dir.path().join(key)).unwrap();
    }
    service::workers::janitor::run_once(&janitor).await;
    let left = queued(&pool).await;
    assert_eq!(left.len(), 75);
    assert!(left
        .iter()
        .all(|(_, attempts, later)| *attempts == 2 && *later));
    // The second failure waits twice as long as the first (60 s), the third no more than the
    // maximum (90 s).
    let waits = |pool: PgPool| async move {
        sqlx::query_scalar::<_, f64>(
            "SELECT DISTINCT round(extract(epoch FROM next_attempt_at - now()) / 10)::float8 * 10
             FROM blob_deletions",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    assert_eq!(waits(pool.clone()).await, [60.0]);
    exec(&pool, "UPDATE blob_deletions SET next_attempt_at = now()").await;
    service::workers::janitor::run_once(&janitor).await;
    assert_eq!(waits(pool.clone()).await, [90.0]);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_running_janitor_deletes_blobs_and_trims_on_its_own(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool.clone()), |settings| {
        settings.workers.janitor = Duration::from_millis(50);
        settings.retention.idempotency_keys = Duration::from_secs(60);
        settings.retention.blob_retry_base = Duration::from_millis(50);
        settings.retention.blob_retry_max = Duration::from_millis(200);
    })
    .await;
    let failing = queue_blob_deletions(&pool, &app.blobs, app.blobs_dir.path(), 120).await;
    exec(
        &pool,
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, state, created_at)
         SELECT id, k, 'h', 'done', now() - interval '2 minutes' * n
         FROM tenants, generate_series(0, 3) n, LATERAL (SELECT 'key-' || n) AS key(k)",
    )
    .await;

    app.eventually(
        "the good blob is deleted and failing ones retried",
        || async {
            let gone = !app
                .blobs
                .exists("tenants/good/photo")
                .await
                .map_err(|e| e.to_string())?;
            let retried: i64 =
                sqlx::query_scalar("SELECT count(*) FROM blob_deletions WHERE attempts >= 3")
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
            if gone && retried == 120 {
                Ok(())
            } else {
                Err(format!(
                    "good blob gone: {gone}, keys tried three times: {retried}"
                ))
            }
        },
    )
    .await;
    for key in &failing {
        std::fs::remove_dir_all(app.blobs_dir.path().join(key)).unwrap();
    }
    app.eventually("every queued blob is deleted once it can be", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM blob_deletions")
            .fetch_one(&pool)
            .await
            .map_err(|e| e.to_string())?;
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} queued"))
        }
    })
    .await;
    let keys = names(&pool, "SELECT key FROM idempotency_keys").await;
    assert_eq!(
        keys,
        set(&["key-0"]),
        "keys used more than a minute ago are forgotten"
    );
}

/// Sets `path`'s modification time to `age` ago.
fn touched_ago(path: &std::path::Path, age: Duration) {
    let when = std::time::SystemTime::now() - age;
    std::fs::File::open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_janitor_removes_scratch_files_a_stopped_process_left(pool: PgPool) {
    let blobs = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut settings = service::Settings::default();
    let horizon = Duration::from_secs(3600);
    settings.scratch_dir = scratch.path().to_path_buf();
    settings.retention.scratch_files = horizon;
    let janitor = service_on(&pool, blobs.path(), settings);

    let path = |name: &str| scratch.path().join(name);
    // Left by a process that died: an upload being checked, and a submit's directory with the
    // training archive of a person's photos in it.
    std::fs::write(path("avatars-upload-dead"), b"a person's photo").unwrap();
    std::fs::create_dir(path("avatars-submit-dead")).unwrap();
    std::fs::write(path("avatars-submit-dead/training.zip"), b"photos").unwrap();
    // In use, or just under the horizon; and a file that is not the service's.
    std::fs::write(path("avatars-upload-live"), b"in flight").unwrap();
    std::fs::write(path("avatars-archive-recent"), b"recent").unwrap();
    std::fs::write(path("someone-else"), b"not ours").unwrap();
    let minute = Duration::from_secs(60);
    touched_ago(&path("avatars-upload-dead"), horizon + minute);
    touched_ago(&path("avatars-submit-dead"), horizon + minute);
    touched_ago(&path("avatars-archive-recent"), horizon - minute);
    touched_ago(&path("someone-else"), 10 * horizon);

    service::workers::janitor::run_once(&janitor).await;

    let left: BTreeSet<String> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        BTreeSet::from(
            [
                "avatars-archive-recent",
                "avatars-upload-live",
                "someone-else"
            ]
            .map(String::from)
        )
    );
    // A second round finds nothing more to remove.
    assert_eq!(service::workers::janitor::sweep_scratch(&janitor).await, 0);
}
