//! `cargo xtask bench-retention`: the janitor's trim of a million old events.
//!
//! A private PostgreSQL gets the service's schema and a million sequenced events eight days old,
//! each delivered to one endpoint with one attempt (three million rows in all), plus ten
//! thousand recent events that must stay. Then the janitor's own trim (`Store::trim` with the
//! default batch size and lock timeout, the retention defaults' horizons) deletes the old ones
//! while writers keep inserting events with their deliveries into the same tables, and a
//! watcher samples `pg_stat_activity` for sessions waiting on a lock. Printed: the trim's
//! time, rows per second, batches and its longest batch (the longest it held any row lock),
//! the writers' insert latency before and during the trim, and the longest lock wait seen.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgcluster::{Cluster, ClusterOptions};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::bench_support::{percentile_ms, WorkDir};

/// Old events by default; `cargo xtask bench-retention <rows>` sets another number.
const OLD_EVENTS: i64 = 1_000_000;
const RECENT_EVENTS: i64 = 10_000;
const WRITERS: usize = 4;
const DAY: u64 = 24 * 3600;

pub fn run(root: &Path, rows: Option<String>) -> Result<(), String> {
    let old_events = match rows {
        None => OLD_EVENTS,
        Some(rows) => rows
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(format!("bench-retention: {rows:?} is not a number of rows"))?,
    };
    // Dropped after the cluster (declared before it), so the server is down before its files go.
    let work = WorkDir::fresh(crate::target_dir(root).join("bench-retention"))?;
    let mut cluster =
        Cluster::start(&work.0.join("pg"), &ClusterOptions::test()).map_err(|e| e.to_string())?;
    cluster
        .ensure_database("bench")
        .map_err(|e| e.to_string())?;
    let url = cluster.url("bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = runtime.block_on(bench(&url, old_events));
    drop(runtime);
    cluster.stop().map_err(|e| e.to_string())?;
    result
}

fn db(error: sqlx::Error) -> String {
    format!("database: {error}")
}

async fn bench(url: &str, old_events: i64) -> Result<(), String> {
    let store = store::Store::connect_lazy(url, 4).map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS as u32 + 2)
        .connect(url)
        .await
        .map_err(db)?;

    eprintln!("bench: filling {old_events} old events, their deliveries and attempts");
    let filled = Instant::now();
    fill(&pool, old_events).await?;
    let sizes: (String, String, String) = sqlx::query_as(
        "SELECT pg_size_pretty(pg_total_relation_size('outbox_events')),
                pg_size_pretty(pg_total_relation_size('webhook_deliveries')),
                pg_size_pretty(pg_total_relation_size('webhook_attempts'))",
    )
    .fetch_one(&pool)
    .await
    .map_err(db)?;
    eprintln!("bench: filled in {:.1} s", filled.elapsed().as_secs_f64());

    // Writers insert an event with its delivery, as the service does, before and during the
    // trim; the watcher records the longest any session waited on a lock.
    let phase = Arc::new(std::sync::Mutex::new(Phase::Before));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(tokio::spawn(write(
            pool.clone(),
            Arc::clone(&phase),
            Arc::clone(&stop),
        )));
    }
    let watcher = tokio::spawn(watch_lock_waits(pool.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let trim = store::Trim::OutboxEvents {
        delivered: Duration::from_secs(7 * DAY),
        failed: Duration::from_secs(30 * DAY),
    };
    let batches = store::TrimBatches::default();
    eprintln!(
        "bench: trimming with batches of {} rows (lock timeout {} ms)",
        batches.rows,
        batches.lock_timeout.as_millis()
    );
    let plan = store
        .explain_trim_batch(trim, batches)
        .await
        .map_err(|e| e.to_string())?;
    *phase.lock().unwrap() = Phase::During;
    let started = Instant::now();
    let report = store.trim(trim, batches).await.map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    *phase.lock().unwrap() = Phase::After;
    stop.store(true, Ordering::SeqCst);
    let mut before = Vec::new();
    let mut during = Vec::new();
    for writer in writers {
        let (b, d) = writer.await.map_err(|e| e.to_string())??;
        before.extend(b);
        during.extend(d);
    }
    let (longest_wait, waiting_samples) = watcher.await.map_err(|e| e.to_string())??;

    let (events, deliveries, attempts, recent): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox_events), (SELECT count(*) FROM webhook_deliveries),
                (SELECT count(*) FROM webhook_attempts),
                (SELECT count(*) FROM outbox_events WHERE event_type = 'bench.recent')",
    )
    .fetch_one(&pool)
    .await
    .map_err(db)?;

    println!();
    println!(
        "Trim of {old_events} delivered events 8 days old (each with 1 delivery and 1 attempt; \
         tables {} / {} / {}), {WRITERS} writers inserting meanwhile",
        sizes.0, sizes.1, sizes.2
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| events deleted | {} |", report.rows);
    println!(
        "| batches (transactions) | {} of at most {} rows |",
        report.batches, batches.rows
    );
    println!("| total time | {:.2} s |", elapsed.as_secs_f64());
    println!(
        "| events per second | {:.0} (plus as many deliveries and attempts by cascade) |",
        report.rows as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| longest batch, begin to commit (longest any row lock was held) | {:.1} ms |",
        report.longest_batch.as_secs_f64() * 1000.0
    );
    println!(
        "| mean batch | {:.1} ms |",
        elapsed.as_secs_f64() * 1000.0 / report.batches.max(1) as f64
    );
    println!(
        "| batch gave up on a lock | {} |",
        if report.lock_timed_out { "yes" } else { "no" }
    );
    println!(
        "| longest lock wait of any session (sampled every 5 ms, {waiting_samples} samples saw one) | {:.1} ms |",
        longest_wait.as_secs_f64() * 1000.0
    );
    for (name, latencies) in [
        ("before the trim", &mut before),
        ("during the trim", &mut during),
    ] {
        latencies.sort();
        println!(
            "| writer inserts {name} | {} inserts, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
            latencies.len(),
            percentile_ms(latencies, 0.50),
            percentile_ms(latencies, 0.99),
            ms(latencies.last().copied().unwrap_or_default()),
        );
    }
    println!(
        "| left: events / deliveries / attempts | {events} / {deliveries} / {attempts} ({recent} recent events of {RECENT_EVENTS} kept, the rest written during the run) |"
    );
    println!();
    println!("One batch's plan (EXPLAIN ANALYZE, rolled back, before the trim):");
    println!();
    for line in &plan {
        println!("    {line}");
    }
    println!();
    if recent != RECENT_EVENTS || report.rows != old_events as u64 {
        return Err("the trim deleted the wrong rows".into());
    }
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn fill(pool: &PgPool, old_events: i64) -> Result<(), String> {
    let statements = [
        "INSERT INTO tenants (id, name) VALUES ('00000000-0000-7000-8000-000000000001', 'bench')",
        "INSERT INTO webhook_endpoints (id, tenant_id, url)
         VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001',
                 'https://example.com/hook')",
        // Old events, sequenced in creation order, one a second for the last 11.6 days before
        // the eighth.
        "INSERT INTO outbox_events (id, tenant_id, event_type, data, payload, position, created_at)
         SELECT gen_random_uuid(), '00000000-0000-7000-8000-000000000001', 'bench.old',
                '{\"training_id\": \"t\"}', '{\"type\": \"bench.old\"}', n,
                now() - interval '8 days' - ($1 - n) * interval '1 second'
         FROM generate_series(1, $1) n",
        "INSERT INTO outbox_events (id, tenant_id, event_type, data, payload, position, created_at)
         SELECT gen_random_uuid(), '00000000-0000-7000-8000-000000000001', 'bench.recent',
                '{}', '{}', $1 + n, now() - n * interval '1 second'
         FROM generate_series(1, 10000) n",
        "SELECT setval('outbox_position_seq', $1 + 10000)",
        "INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, event_position,
                                         status, attempt_count, delivered_at, created_at)
         SELECT gen_random_uuid(), tenant_id, '00000000-0000-7000-8000-000000000002', id, position,
                'delivered', 1, created_at, created_at
         FROM outbox_events",
        "INSERT INTO webhook_attempts (delivery_id, number, started_at, finished_at, outcome,
                                       status_code, latency_ms)
         SELECT id, 1, created_at, created_at, 'succeeded', 200, 20 FROM webhook_deliveries",
        "VACUUM ANALYZE outbox_events",
        "VACUUM ANALYZE webhook_deliveries",
        "VACUUM ANALYZE webhook_attempts",
    ];
    for statement in statements {
        let query = sqlx::query(statement);
        let query = if statement.contains("$1") {
            query.bind(old_events)
        } else {
            query
        };
        query.execute(pool).await.map_err(db)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Before,
    During,
    After,
}

type Latencies = (Vec<Duration>, Vec<Duration>);

/// Inserts an event and its delivery per transaction until stopped; returns the latencies
/// before and during the trim.
async fn write(
    pool: PgPool,
    phase: Arc<std::sync::Mutex<Phase>>,
    stop: Arc<AtomicBool>,
) -> Result<Latencies, String> {
    let (mut before, mut during) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::SeqCst) {
        let now = *phase.lock().unwrap();
        let started = Instant::now();
        sqlx::query(
            "WITH event AS (
                 INSERT INTO outbox_events (id, tenant_id, event_type, data, payload, position)
                 VALUES (gen_random_uuid(), '00000000-0000-7000-8000-000000000001', 'bench.new',
                         '{}', '{}', nextval('outbox_position_seq'))
                 RETURNING id, tenant_id, position)
             INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, event_position)
             SELECT gen_random_uuid(), tenant_id, '00000000-0000-7000-8000-000000000002', id, position
             FROM event",
        )
        .execute(&pool)
        .await
        .map_err(db)?;
        let took = started.elapsed();
        match (now, *phase.lock().unwrap()) {
            (Phase::Before, Phase::Before) => before.push(took),
            (Phase::During, Phase::During) => during.push(took),
            _ => {}
        }
    }
    Ok((before, during))
}

/// Samples how long the longest-waiting session has waited for a lock, every 5 ms until
/// stopped. Returns the longest seen and how many samples saw a waiting session.
async fn watch_lock_waits(pool: PgPool, stop: Arc<AtomicBool>) -> Result<(Duration, u64), String> {
    let mut longest = Duration::ZERO;
    let mut samples = 0;
    while !stop.load(Ordering::SeqCst) {
        let waited: Option<f64> = sqlx::query_scalar(
            "SELECT max(extract(epoch FROM clock_timestamp() - state_change))::float8
             FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .map_err(db)?;
        if let Some(waited) = waited {
            samples += 1;
            longest = longest.max(Duration::from_secs_f64(waited.max(0.0)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((longest, samples))
}
