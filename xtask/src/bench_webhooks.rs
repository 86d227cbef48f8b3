//! `cargo xtask bench-webhooks`: throughput and latency of signed fal completion callbacks.
//!
//! Builds the release binary, starts a private PostgreSQL and an in-process fal simulator (for
//! its JWKS and signing key), seeds trainings in `submitted` straight into the database, and
//! posts one signed completion webhook per job at `avatars serve`, first from 16 and then from
//! 64 concurrent senders (fresh jobs each time). After each run it checks that every job became
//! `succeeded` exactly once. Then, with the service stopped, pgbench runs the same per-webhook
//! transaction against the same database with the same client counts: the ratio of the two
//! rates says how much of the database's capacity the service turns into acknowledged webhooks.
//!
//! The sender shares the machine's cores with the service and PostgreSQL, so it runs optimised:
//! a debug `cargo xtask` builds the release xtask and hands the benchmark to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fal_sim::{FalSim, SimConfig};
use pgcluster::{Cluster, ClusterOptions};
use secrecy::{ExposeSecret, SecretString};
use service::secrets::KeyRing;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::bench_photos::{check, free_port, ServerGuard};
use crate::bench_support::{
    against_args, interrupted, log_tail, percentile_ms, postmaster_pid, run_optimised,
    service_statements, split_against, stop_on_ctrl_c, wait_ready, Cpu, WorkDir, INTERRUPTED,
};

/// Concurrent senders of the two runs (and pgbench's client counts).
const SENDERS: [usize; 2] = [16, 64];
/// Callbacks per run: a multiple of every sender count, so pgbench's `-t` matches exactly.
const REQUESTS: usize = 4096;
/// Untimed callbacks first, so connection set-up and the JWKS fetch stay out of the numbers.
const WARMUP: usize = 256;
/// The service's pool: half the larger sender count. Two cores gain nothing from more
/// concurrent transactions than that; fewer would queue the 64 senders inside the service.
const POOL_SIZE: u32 = 32;
/// A run stops starting requests after this long, whatever is left.
const RUN_LIMIT: Duration = Duration::from_secs(60);
const USER_ID: &str = "bench-user";
/// Every this many callbacks, one is delivered twice (answered 200 `duplicate`).
const DUPLICATE_EVERY: usize = 16;

/// `--against <avatars binary>`: an earlier build measured first, in the same run.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let (against, rest) = split_against(args)?;
    if !rest.is_empty() {
        return Err("usage: cargo xtask bench-webhooks [--against <avatars binary>]".into());
    }
    if cfg!(debug_assertions) {
        return run_optimised(root, "bench-webhooks", &against_args(against.as_deref()));
    }
    stop_on_ctrl_c();
    bench(root, against)
}

/// One seeded training and what a callback for it needs.
#[derive(Clone)]
struct SeedJob {
    n: usize,
    id: Uuid,
    token: String,
    request_id: String,
    gateway_request_id: String,
}

impl SeedJob {
    fn body(&self) -> String {
        format!(
            r#"{{"request_id":"{}","gateway_request_id":"{}","status":"OK","payload":{{"finetune_id":"ft-{}"}},"error":null,"payload_error":null}}"#,
            self.request_id, self.gateway_request_id, self.n
        )
    }
}

/// What one sender run measured.
struct RunResult {
    requests: usize,
    errors: usize,
    not_applied: usize,
    /// Answered 200 `duplicate`: the copies sent again.
    duplicates: usize,
    first_error: Option<String>,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One pgbench run.
struct PgbenchResult {
    tps: f64,
    processed: String,
    latency_ms: String,
    /// Transaction latency percentiles from pgbench's per-transaction log.
    p50_ms: f64,
    p99_ms: f64,
}

/// What the service's run measured, before pgbench's.
struct ServiceRun {
    senders: usize,
    run: RunResult,
    terminal_ok: i64,
    terminal_total: usize,
    /// Jobs still waiting for custody when the run ended, and how long they took.
    custody_drain: (i64, f64),
    run_cpu: Cpu,
    drain_cpu: Cpu,
    /// Database transactions (committed or rolled back) from the run's start until its
    /// follow-up work drained.
    transactions: i64,
    statements: Statements,
    /// The service's callback batch sizes during the run.
    batches: Histogram,
    /// How long the batches' transactions took during the run, in seconds.
    batch_seconds: Histogram,
}

/// One row of the table: the service's run and pgbench's at the same client count.
struct Row {
    service: ServiceRun,
    pgbench: PgbenchResult,
    pgbench_cpu: Cpu,
    pgbench_terminal_ok: i64,
}

fn bench(root: &Path, against: Option<PathBuf>) -> Result<(), String> {
    let binary = crate::bench_photos::release_binary(root)?;
    let mut builds = Vec::new();
    if let Some(earlier) = against {
        builds.push((format!("{} (--against)", earlier.display()), earlier));
    }
    builds.push(("this build".to_string(), binary));
    let mut results = Vec::new();
    for (label, binary) in builds {
        eprintln!("bench: measuring {label}");
        results.push((label, bench_build(root, &binary)?));
    }
    // Printed together at the end: the builds ran back to back on the same machine.
    for (label, measured) in &results {
        print_table(label, measured);
    }
    Ok(())
}

/// What one build measured.
struct Measured {
    rows: Vec<Row>,
    index_reads: String,
}

fn bench_build(root: &Path, binary: &Path) -> Result<Measured, String> {
    let bindir = pgcluster::find_bindir().map_err(|e| e.to_string())?;
    let pgbench = bindir.join("pgbench");
    if !pgbench.is_file() {
        return Err(format!("no pgbench beside initdb in {}", bindir.display()));
    }

    // Dropped after the cluster (declared before it), so the server is down before its files go.
    let work = WorkDir::fresh(crate::target_dir(root).join("bench-webhooks"))?;
    // Durable, as in production: every commit waits for its WAL flush. pg_stat_statements
    // says where the database's time per callback goes.
    let options = ClusterOptions {
        durable: true,
        max_connections: 300,
        extra_settings: vec!["shared_preload_libraries = 'pg_stat_statements'".into()],
    };
    let mut cluster = Cluster::start(&work.0.join("pg"), &options).map_err(|e| e.to_string())?;
    cluster
        .ensure_database("bench")
        .map_err(|e| e.to_string())?;
    let database_url = cluster.url("bench");
    let mut migrate = Command::new(binary);
    migrate
        .env("DATABASE_URL", &database_url)
        .env("RUST_LOG", "warn");
    check(migrate.arg("migrate").output(), "avatars migrate")?;
    let mut create_key = Command::new(binary);
    create_key
        .env("DATABASE_URL", &database_url)
        .env("RUST_LOG", "warn");
    check(
        create_key
            .args(["api-keys", "create", "--tenant", "bench"])
            .output(),
        "avatars api-keys create",
    )?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // The server derives each job's callback token from the job id under this ring; the
    // bench derives the same tokens for the URLs it posts to.
    let (ring, ring_text) = KeyRing::generate("bench");
    let setup = Setup {
        ring,
        ring_text,
        binary: binary.to_path_buf(),
        work: work.0.clone(),
        database_url,
        pgbench,
        pg_port: cluster.port(),
        postmaster: postmaster_pid(&cluster)?,
    };
    let (rows, index_reads) = runtime.block_on(bench_async(&setup))?;
    drop(runtime);
    cluster.stop().map_err(|e| e.to_string())?;
    Ok(Measured { rows, index_reads })
}

struct Setup {
    ring: KeyRing,
    ring_text: SecretString,
    binary: PathBuf,
    work: PathBuf,
    database_url: String,
    pgbench: PathBuf,
    pg_port: u16,
    postmaster: u32,
}

async fn bench_async(setup: &Setup) -> Result<(Vec<Row>, String), String> {
    let sim = FalSim::start(SimConfig::default())
        .await
        .map_err(|e| format!("starting fal-sim: {e}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&setup.database_url)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let tenant: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'bench'")
        .fetch_one(&pool)
        .await
        .map_err(|e| format!("finding the bench tenant: {e}"))?;

    eprintln!(
        "bench: seeding {} trainings",
        WARMUP + 2 * SENDERS.len() * REQUESTS
    );
    let mut next_n = 0;
    let mut take = |count: usize| {
        let start = next_n;
        next_n += count;
        start
    };
    let warmup = seed(&pool, &setup.ring, tenant, take(WARMUP), WARMUP).await?;
    let mut service_jobs = Vec::new();
    for _ in SENDERS {
        service_jobs.push(seed(&pool, &setup.ring, tenant, take(REQUESTS), REQUESTS).await?);
    }
    let mut pgbench_jobs = Vec::new();
    for _ in SENDERS {
        pgbench_jobs.push(seed(&pool, &setup.ring, tenant, take(REQUESTS), REQUESTS).await?);
    }
    seed_pgbench_queue(&pool, &pgbench_jobs.concat()).await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
        .map_err(|e| format!("creating pg_stat_statements: {e}"))?;
    sqlx::query("VACUUM ANALYZE")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;

    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let log_path = setup.work.join("serve.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let key = sim.default_key().unwrap_or_default().to_string();
    let mut server = ServerGuard(
        Command::new(&setup.binary)
            .arg("serve")
            .env("DATABASE_URL", &setup.database_url)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("PUBLIC_BASE_URL", &base)
            .env("FAL_KEY", key)
            .env("SECRETS_KEYS", setup.ring_text.expose_secret())
            .env("FAL_QUEUE_URL", sim.queue_url().as_str())
            .env("FAL_REST_URL", sim.rest_url().as_str())
            .env("FAL_CDN_URL", sim.cdn_url().as_str())
            .env("FAL_JWKS_URL", sim.jwks_url().as_str())
            .env("STORAGE_URL", setup.work.join("blobs"))
            .env("RUST_LOG", "warn")
            .env("DATABASE_MAX_CONNECTIONS", POOL_SIZE.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let with_log = |message: String| format!("{message}\n{}", log_tail(&log_path));

    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    wait_ready(&client, &base, &mut server)
        .await
        .map_err(with_log)?;

    eprintln!("bench: {WARMUP} warm-up callbacks");
    let warm = fire(&client, &sim, &base, &warmup, 16).await;
    if warm.errors > 0 {
        return Err(with_log(format!(
            "warm-up: {} of {} callbacks failed, first: {}",
            warm.errors,
            warm.requests,
            warm.first_error.unwrap_or_default()
        )));
    }

    // Statistics, as autovacuum keeps them in a running database: the seeded tables were
    // filled seconds ago and `models` was empty, so plans cached without statistics (the
    // foreign-key checks' among them) would scan whole tables and measure the bench's own cold
    // start. Planning again with statistics is what a running database does.
    wait_custody_drained(&pool).await?;
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .map_err(|e| format!("analyzing the seeded tables: {e}"))?;

    let origin = Instant::now();
    let mut measured = Vec::new();
    for (senders, jobs) in SENDERS.into_iter().zip(&service_jobs) {
        wait_custody_drained(&pool).await?;
        interrupted()?;
        eprintln!(
            "bench: {} callbacks from {senders} concurrent senders",
            jobs.len()
        );
        let serve_pid = Some(server.0.id());
        let transactions_before = settled_transactions(&pool).await?;
        let batches_before = histogram(&client, &base, BATCH_SIZE).await;
        let batch_seconds_before = histogram(&client, &base, BATCH_SECONDS).await;
        reset_statements(&pool).await?;
        let before = Cpu::sample(serve_pid, setup.postmaster, Instant::now(), origin);
        let run = fire(&client, &sim, &base, jobs, senders).await;
        let after = Cpu::sample(serve_pid, setup.postmaster, Instant::now(), origin);
        let statements = top_statements(&pool).await?;
        let batches = histogram(&client, &base, BATCH_SIZE)
            .await
            .since(&batches_before);
        let batch_seconds = histogram(&client, &base, BATCH_SECONDS)
            .await
            .since(&batch_seconds_before);
        interrupted()?;
        let (terminal_ok, terminal_total) = terminal_once(&pool, jobs).await?;
        let drained = Instant::now();
        let backlog = wait_custody_drained(&pool).await?;
        let drain_cpu =
            Cpu::sample(serve_pid, setup.postmaster, Instant::now(), origin).since(after);
        // Counted up to here: the follow-up work (sequencing the events) is the callbacks' too.
        let transactions = settled_transactions(&pool).await? - transactions_before;
        measured.push(ServiceRun {
            senders,
            run,
            terminal_ok,
            terminal_total,
            custody_drain: (backlog, drained.elapsed().as_secs_f64()),
            run_cpu: after.since(before),
            drain_cpu,
            transactions,
            statements,
            batches,
            batch_seconds,
        });
    }
    let index_reads = index_reads(&pool).await?;
    server.stop();
    if let Some(line) = log_tail(&log_path).lines().nth(1) {
        eprintln!("bench: the service logged (last lines in serve.log), e.g.: {line}");
    }

    let script = setup.work.join("webhook.sql");
    std::fs::write(&script, PGBENCH_SCRIPT).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (m, jobs) in measured.into_iter().zip(&pgbench_jobs) {
        interrupted()?;
        eprintln!("bench: pgbench, {} clients", m.senders);
        let before = Cpu::sample(None, setup.postmaster, Instant::now(), origin);
        let pgbench = run_pgbench(setup, &script, m.senders)?;
        let pgbench_cpu = Cpu::sample(None, setup.postmaster, Instant::now(), origin).since(before);
        let (pgbench_terminal_ok, _) = terminal_once(&pool, jobs).await?;
        rows.push(Row {
            service: m,
            pgbench,
            pgbench_cpu,
            pgbench_terminal_ok,
        });
    }
    pool.close().await;
    sim.shutdown().await;
    Ok((rows, index_reads))
}

/// How many entries each index of `jobs` returned per scan so far: a partial index that keeps
/// dead entries of rows that left it shows up here.
async fn index_reads(pool: &PgPool) -> Result<String, String> {
    // Statistics are flushed by each backend at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT indexrelname::text, idx_scan, idx_tup_read FROM pg_stat_user_indexes
         WHERE relname = 'jobs' AND idx_scan > 0 ORDER BY idx_tup_read DESC",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| format!("reading index statistics: {e}"))?;
    Ok(rows
        .iter()
        .map(|(name, scans, read)| {
            format!(
                "{name} {scans} scans, {:.1} entries/scan",
                *read as f64 / (*scans).max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join("; "))
}

/// Committed and rolled-back transactions of the bench database so far. Backends report
/// their counts at most once a second (idle ones soon after), so this waits that out first.
async fn settled_transactions(pool: &PgPool) -> Result<i64, String> {
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database
         WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| format!("reading transaction counts: {e}"))
}

/// The statements the database ran during a run, by total execution time.
#[derive(Default)]
struct Statements {
    /// Execution time of every statement, milliseconds.
    total_ms: f64,
    calls: i64,
    /// The costliest: (calls, total ms, the statement's text, shortened).
    top: Vec<(i64, f64, String)>,
}

async fn reset_statements(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("resetting pg_stat_statements: {e}"))
}

async fn top_statements(pool: &PgPool) -> Result<Statements, String> {
    let rows = service_statements(pool).await?;
    Ok(Statements {
        total_ms: rows.iter().map(|r| r.1).sum(),
        calls: rows.iter().map(|r| r.0).sum(),
        top: rows.into_iter().take(12).collect(),
    })
}

/// A histogram of the service's: (upper bound, cumulative count) per bucket, the sum and the
/// count. Empty for a build without it.
#[derive(Default, Clone)]
struct Histogram {
    buckets: Vec<(String, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |b| b.1);
                    (le.clone(), n - before)
                })
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// "210 batches, mean 23.1; <=1: 5; <=2: 10; ..." with the count in each bucket (not
    /// cumulative); values and bounds are multiplied by `scale` (1000: seconds as ms).
    fn describe(&self, scale: f64) -> String {
        if self.count == 0.0 {
            return "none recorded".into();
        }
        let mut previous = 0.0;
        let mut parts = vec![format!(
            "{} batches, mean {:.1}",
            self.count,
            self.sum * scale / self.count
        )];
        for (le, cumulative) in &self.buckets {
            let here = cumulative - previous;
            previous = *cumulative;
            if here > 0.0 {
                let bound = le
                    .parse::<f64>()
                    .map_or_else(|_| le.clone(), |bound| format!("{}", bound * scale));
                parts.push(format!("<={bound}: {here}"));
            }
        }
        parts.join("; ")
    }
}

const BATCH_SIZE: &str = "avatars_fal_callback_batch_size";
const BATCH_SECONDS: &str = "avatars_fal_callback_batch_duration_seconds";

/// The service's histogram `name`, read from its metrics.
async fn histogram(client: &reqwest::Client, base: &str, name: &str) -> Histogram {
    let Ok(text) = async {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await
    }
    .await
    else {
        return Histogram::default();
    };
    let mut histogram = Histogram::default();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(le) = series
            .strip_prefix(&format!("{name}_bucket{{le=\""))
            .and_then(|rest| rest.strip_suffix("\"}"))
        {
            histogram.buckets.push((le.to_string(), value));
        } else if series == format!("{name}_sum") {
            histogram.sum = value;
        } else if series == format!("{name}_count") {
            histogram.count = value;
        }
    }
    histogram
}

/// Inserts `count` avatars, each with one pro training in `submitted` that fal has accepted.
async fn seed(
    pool: &PgPool,
    ring: &KeyRing,
    tenant: Uuid,
    first: usize,
    count: usize,
) -> Result<Vec<SeedJob>, String> {
    let jobs: Vec<SeedJob> = (first..first + count)
        .map(|n| {
            let id = Uuid::now_v7();
            SeedJob {
                n,
                id,
                token: ring.job_token(id).expose_secret().to_string(),
                request_id: Uuid::new_v4().to_string(),
                gateway_request_id: Uuid::new_v4().to_string(),
            }
        })
        .collect();
    let avatar_ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::now_v7()).collect();
    let phrases: Vec<String> = jobs.iter().map(|j| format!("bench_{}", j.n)).collect();
    let job_ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let request_ids: Vec<String> = jobs.iter().map(|j| j.request_id.clone()).collect();
    // The balanced pro preset, as `TrainingParams::to_json` writes it.
    let params = serde_json::json!({
        "iterations": 500, "learning_rate": 0.0001, "priority": "quality",
        "lora_rank": 32, "finetune_type": "full", "captioning": true,
    });
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO avatars (id, tenant_id, name, kind, trigger_phrase, status, photo_count)
         SELECT a, $1, 'bench avatar ' || t, 'character', t, 'training', 10
         FROM UNNEST($2::uuid[], $3::text[]) AS x(a, t)",
    )
    .bind(tenant)
    .bind(&avatar_ids)
    .bind(&phrases)
    .execute(&mut *tx)
    .await
    .map_err(|e| format!("seeding avatars: {e}"))?;
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, avatar_id, kind, status, trainer, endpoint, preset, params,
             trigger_phrase, estimated_cost_usd, fal_request_id, fence,
             submit_started_at, submitted_at, next_check_at, deadline_at, created_at)
         SELECT j, $1, a, 'training', 'submitted', 'pro', 'fal-ai/flux-pro-trainer', 'balanced', $2,
             t, 2.0, r, 1, now(), now(), now() + interval '1 hour', now() + interval '1 day',
             now() - interval '1 minute'
         FROM UNNEST($3::uuid[], $4::uuid[], $5::text[], $6::text[]) AS x(j, a, t, r)",
    )
    .bind(tenant)
    .bind(&params)
    .bind(&job_ids)
    .bind(&avatar_ids)
    .bind(&phrases)
    .bind(&request_ids)
    .execute(&mut *tx)
    .await
    .map_err(|e| format!("seeding jobs: {e}"))?;
    sqlx::query(
        "INSERT INTO job_events (job_id, event, from_status, to_status, applied, cause)
         SELECT j, 'submitted', 'uploading', 'submitted', true, 'bench seed'
         FROM UNNEST($1::uuid[]) AS x(j)",
    )
    .bind(&job_ids)
    .execute(&mut *tx)
    .await
    .map_err(|e| format!("seeding job events: {e}"))?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(jobs)
}

/// pgbench's work list: one row per job, numbered from 1 in the order the clients take them
/// (a shared sequence), with the callback body the service would have received.
async fn seed_pgbench_queue(pool: &PgPool, jobs: &[SeedJob]) -> Result<(), String> {
    let numbers: Vec<i64> = (1..=jobs.len() as i64).collect();
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let request_ids: Vec<String> = jobs.iter().map(|j| j.request_id.clone()).collect();
    let bodies: Vec<String> = jobs.iter().map(SeedJob::body).collect();
    for statement in [
        "CREATE TABLE bench_pgbench_queue (n bigint PRIMARY KEY, job_id uuid NOT NULL,
             request_id text NOT NULL, body_sha256 text NOT NULL, body jsonb NOT NULL,
             result jsonb NOT NULL)",
        "CREATE SEQUENCE bench_pgbench_seq",
    ] {
        sqlx::query(statement)
            .execute(pool)
            .await
            .map_err(|e| e.to_string())?;
    }
    sqlx::query(
        "INSERT INTO bench_pgbench_queue
         SELECT n, j, r, encode(sha256(convert_to(b, 'UTF8')), 'hex'), b::jsonb, b::jsonb -> 'payload'
         FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[]) AS x(n, j, r, b)",
    )
    .bind(&numbers)
    .bind(&ids)
    .bind(&request_ids)
    .bind(&bodies)
    .execute(pool)
    .await
    .map_err(|e| format!("seeding the pgbench queue: {e}"))?;
    Ok(())
}

/// A callback ready to send.
#[derive(Clone)]
struct Prepared {
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Posts one signed completion callback per job from `senders` concurrent tasks sharing one
/// keep-alive client. Bodies are signed just before the run (with the current time), so the
/// run itself measures only the service.
async fn fire(
    client: &reqwest::Client,
    sim: &FalSim,
    base: &str,
    jobs: &[SeedJob],
    senders: usize,
) -> RunResult {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // fal delivers some callbacks twice: every DUPLICATE_EVERY-th is sent again right after
    // itself, so the copies often meet in one batch.
    let prepared: Arc<Vec<Prepared>> = Arc::new(
        jobs.iter()
            .flat_map(|job| {
                let body = job.body().into_bytes();
                let call = Prepared {
                    url: format!("{base}/webhooks/fal?job={}&token={}", job.id, job.token),
                    headers: sim.webhook_headers(&job.request_id, USER_ID, now, &body),
                    body,
                };
                let copies = if job.n % DUPLICATE_EVERY == 0 { 2 } else { 1 };
                std::iter::repeat_n(call, copies)
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let (client, prepared, next) = (client.clone(), prepared.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut errors, mut not_applied, mut first_error) = (0, 0, None);
                let mut duplicates = 0;
                loop {
                    if INTERRUPTED.load(Ordering::Relaxed) || started.elapsed() > RUN_LIMIT {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(call) = prepared.get(i) else { break };
                    let sent = Instant::now();
                    let mut request = client
                        .post(&call.url)
                        .header("content-type", "application/json")
                        .body(call.body.clone());
                    for (name, value) in &call.headers {
                        request = request.header(name, value);
                    }
                    let outcome = match request.send().await {
                        Ok(response) => {
                            let status = response.status();
                            match response.bytes().await {
                                Ok(body) if status == reqwest::StatusCode::OK => Ok(body),
                                Ok(body) => Err(format!(
                                    "HTTP {status}: {}",
                                    String::from_utf8_lossy(&body)
                                )),
                                Err(error) => Err(format!("reading the answer: {error}")),
                            }
                        }
                        Err(error) => Err(error.to_string()),
                    };
                    latencies.push(sent.elapsed());
                    match outcome {
                        Ok(body) => {
                            let outcome = serde_json::from_slice::<serde_json::Value>(&body)
                                .ok()
                                .and_then(|v| Some(v.get("outcome")?.as_str()?.to_string()));
                            match outcome.as_deref() {
                                Some("applied") => {}
                                Some("duplicate") => duplicates += 1,
                                _ => not_applied += 1,
                            }
                        }
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert(error);
                        }
                    }
                }
                (latencies, errors, not_applied, duplicates, first_error)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(jobs.len());
    let (mut errors, mut not_applied, mut first_error) = (0, 0, None);
    let mut duplicates = 0;
    for task in tasks {
        match task.await {
            Ok((mut l, e, n, d, f)) => {
                latencies.append(&mut l);
                errors += e;
                not_applied += n;
                duplicates += d;
                if first_error.is_none() {
                    first_error = f;
                }
            }
            Err(error) => {
                errors += 1;
                first_error.get_or_insert(format!("sender task: {error}"));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    RunResult {
        requests: latencies.len(),
        errors,
        not_applied,
        duplicates,
        first_error,
        seconds,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
    }
}

/// How many of `jobs` are `succeeded` with exactly one `succeeded` transition recorded.
async fn terminal_once(pool: &PgPool, jobs: &[SeedJob]) -> Result<(i64, usize), String> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let ok: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs j
         LEFT JOIN (SELECT job_id, count(*) AS n FROM job_events
                    WHERE to_status = 'succeeded' AND job_id = ANY($1) GROUP BY job_id) e
           ON e.job_id = j.id
         WHERE j.id = ANY($1) AND j.status = 'succeeded' AND e.n = 1",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await
    .map_err(|e| format!("checking terminal transitions: {e}"))?;
    Ok((ok, ids.len()))
}

/// Waits (at most two minutes) until the service's follow-up work is done (the custody worker
/// has recorded the models of every succeeded job that needed it, and the event sequencer has
/// sequenced every event), so a run does not start with the previous run's backlog.
/// Returns the backlog it started with.
async fn wait_custody_drained(pool: &PgPool) -> Result<i64, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut backlog = None;
    loop {
        interrupted()?;
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM jobs
                     WHERE status = 'succeeded' AND (custody_needed OR result_fetch_needed))
                  + (SELECT count(*) FROM outbox_events WHERE position IS NULL)",
        )
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())?;
        let backlog = *backlog.get_or_insert(left);
        if left == 0 {
            return Ok(backlog);
        }
        if Instant::now() >= deadline {
            eprintln!("bench: {left} results or events still waiting; going on");
            return Ok(backlog);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The service's per-webhook database work (`job_by_id`, then `apply_webhook` with one
/// `Completed` event carrying the Pro trainer's finetune id): the same statements in the same
/// order, prepared, with the UPDATE setting the values a completion sets as literals instead
/// of `coalesce` over bound parameters. The completion records the model, points the avatar at
/// it and writes `training.succeeded` to the outbox with a snapshot of the job and the model
/// (built by PostgreSQL here, by the service in Rust).
/// The first line stands in for `job_by_id`: it reads the job row by key and, through a shared
/// sequence, hands each transaction a distinct job and the body fal would have sent for it.
const PGBENCH_SCRIPT: &str = r#"SELECT q.job_id, q.request_id, q.body_sha256, q.body, q.result,
    j.tenant_id, j.avatar_id, j.trigger_phrase
  FROM bench_pgbench_queue q JOIN jobs j ON j.id = q.job_id
  WHERE q.n = (SELECT nextval('bench_pgbench_seq')) \gset
BEGIN;
INSERT INTO webhook_inbox (fal_request_id, body_sha256, job_id, fal_status, outcome, body)
  VALUES (:request_id, :body_sha256, :job_id, 'OK', 'applied', :body)
  ON CONFLICT (fal_request_id, body_sha256) DO NOTHING
  RETURNING id;
SELECT status, progress, fence FROM jobs WHERE id = :job_id FOR UPDATE;
UPDATE jobs SET
    status = 'succeeded',
    queue_position = NULL,
    progress = 1.0,
    result = :result,
    custody_needed = false,
    finished_at = now(),
    lease_owner = NULL,
    lease_until = NULL,
    updated_at = now()
  WHERE id = :job_id AND status = 'submitted'
  RETURNING id, tenant_id, avatar_id, kind, status, trainer, endpoint, preset, params,
    trigger_phrase, input_blob_key, estimated_cost_usd, fal_request_id, status_url,
    response_url, cancel_url, queue_position, progress, error_code, error_message, result,
    result_fetch_needed, custody_needed, fence, submit_started_at, next_check_at, check_failures,
    deadline_at, cancel_requested_at, created_at, updated_at, submitted_at, started_at, finished_at;
INSERT INTO job_events (job_id, event, from_status, to_status, applied, cause)
  VALUES (:job_id, 'completed', 'submitted', 'succeeded', true, 'fal webhook');
INSERT INTO models (id, tenant_id, avatar_id, training_id, model_type, trigger_phrase,
    artifact_key, artifact_sha256, artifact_bytes, config_key, fal_artifact_url, finetune_id)
  VALUES (gen_random_uuid(), :tenant_id, :avatar_id, :job_id, 'finetune', :trigger_phrase,
    NULL, NULL, NULL, NULL, NULL, :result::jsonb ->> 'finetune_id')
  ON CONFLICT (training_id) DO NOTHING
  RETURNING id AS model_id, avatar_id, training_id, model_type, trigger_phrase, artifact_key,
    artifact_sha256, artifact_bytes, config_key, fal_artifact_url, finetune_id \gset
SELECT status, current_model_id IS NOT NULL FROM avatars
  WHERE tenant_id = :tenant_id AND id = :avatar_id FOR UPDATE;
UPDATE avatars SET current_model_id = :model_id, status = 'trained', updated_at = now()
  WHERE id = :avatar_id;
INSERT INTO outbox_events (id, tenant_id, event_type, job_id, avatar_id, data)
  SELECT gen_random_uuid(), j.tenant_id, 'training.succeeded', j.id, j.avatar_id,
    jsonb_build_object('kind', 'training', 'job', to_jsonb(j), 'model', to_jsonb(m))
  FROM jobs j JOIN models m ON m.training_id = j.id WHERE j.id = :job_id;
COMMIT;
"#;

fn run_pgbench(setup: &Setup, script: &Path, clients: usize) -> Result<PgbenchResult, String> {
    let per_client = REQUESTS / clients;
    let log_dir = setup.work.join(format!("pgbench-log-{clients}"));
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let output = check(
        Command::new(&setup.pgbench)
            .args(["-h", "127.0.0.1", "-p", &setup.pg_port.to_string()])
            .args([
                "-U",
                pgcluster::SUPERUSER,
                "-n",
                "-M",
                "prepared",
                "-j",
                "2",
            ])
            .args(["-c", &clients.to_string(), "-t", &per_client.to_string()])
            .arg("--log")
            .arg(format!("--log-prefix={}", log_dir.join("txn").display()))
            .arg("-f")
            .arg(script)
            .arg("bench")
            .stdin(Stdio::null())
            .output(),
        "pgbench",
    )?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    // "tps = 1234.5 (without initial connection time)" (PostgreSQL 14+) or
    // "tps = 1234.5 (excluding connections establishing)" (older).
    let tps = text
        .lines()
        .find(|l| {
            l.starts_with("tps = ")
                && (l.contains("without initial connection") || l.contains("excluding"))
        })
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("no tps in pgbench's output:\n{text}"))?;
    let processed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .unwrap_or("?")
        .trim()
        .to_string();
    let latency_ms = text
        .lines()
        .find_map(|l| l.strip_prefix("latency average = "))
        .unwrap_or("?")
        .trim()
        .to_string();
    let latencies = pgbench_latencies(&log_dir)?;
    Ok(PgbenchResult {
        tps,
        processed,
        latency_ms,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
    })
}

/// Every transaction's latency from pgbench's per-transaction logs in `dir` (one file per
/// thread; the third field of a line is the latency in microseconds), sorted.
fn pgbench_latencies(dir: &Path) -> Result<Vec<Duration>, String> {
    let mut latencies = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in text.lines() {
            let micros = line
                .split_whitespace()
                .nth(2)
                .and_then(|field| field.parse::<u64>().ok())
                .ok_or_else(|| format!("{}: unexpected line {line:?}", path.display()))?;
            latencies.push(Duration::from_micros(micros));
        }
    }
    latencies.sort();
    Ok(latencies)
}

fn print_table(label: &str, measured: &Measured) {
    let rows = &measured.rows;
    println!();
    println!("webhooks: signed completion callbacks, {label}, release build, fsync on");
    println!(
        "{:<8} {:<9} {:<7} {:<7} {:<7} {:<7} {:<12} {:<16} {:<6} {:<7} {:<9} terminal-once",
        "senders",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "pgbench tps",
        "pgbench p50/p99",
        "ratio",
        "txn/cb",
        "db us/cb"
    );
    for row in rows {
        let rate = row.service.run.requests as f64 / row.service.run.seconds;
        let callbacks = row.service.run.requests.max(1) as f64;
        println!(
            "{:<8} {:<9} {:<7} {:<7.0} {:<7.1} {:<7.1} {:<12.0} {:<16} {:<6.2} {:<7.2} {:<9.0} {}/{}{}",
            row.service.senders,
            row.service.run.requests,
            row.service.run.errors,
            rate,
            row.service.run.p50_ms,
            row.service.run.p99_ms,
            row.pgbench.tps,
            format!("{:.1}/{:.1}", row.pgbench.p50_ms, row.pgbench.p99_ms),
            rate / row.pgbench.tps,
            row.service.transactions as f64 / callbacks,
            row.service.statements.total_ms * 1000.0 / callbacks,
            row.service.terminal_ok,
            row.service.terminal_total,
            if row.service.terminal_ok == row.service.terminal_total as i64 {
                " ok"
            } else {
                " FAILED"
            }
        );
    }
    println!();
    println!(
        "ratio: callbacks/s over pgbench's TPS running the same per-callback transaction; \
         pgbench p50/p99: that transaction's latency in ms, one commit each; \
         txn/cb: database transactions per callback, follow-up work included; \
         db us/cb: statement execution time per callback (pg_stat_statements)"
    );
    println!(
        "targets: at 64 senders >= 2400 callbacks/s and ratio >= 1.5, p99 <= 50 ms, txn/cb <= 0.5; \
         at 16 p99 <= 15 ms; zero errors; every job terminal exactly once"
    );
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    if let Some(row) = rows.iter().find(|r| r.service.senders == 64) {
        let rate = row.service.run.requests as f64 / row.service.run.seconds;
        let ratio = rate / row.pgbench.tps;
        let per = row.service.transactions as f64 / row.service.run.requests.max(1) as f64;
        println!(
            "  64 senders: {rate:.0}/s ({}), ratio {ratio:.2} ({}), p99 {:.1} ms ({}), txn/cb {per:.2} ({})",
            verdict(rate >= 2400.0),
            verdict(ratio >= 1.5),
            row.service.run.p99_ms,
            verdict(row.service.run.p99_ms <= 50.0),
            verdict(per <= 0.5),
        );
    }
    if let Some(row) = rows.iter().find(|r| r.service.senders == 16) {
        println!(
            "  16 senders: p99 {:.1} ms ({})",
            row.service.run.p99_ms,
            verdict(row.service.run.p99_ms <= 15.0)
        );
    }
    let errors: usize = rows.iter().map(|r| r.service.run.errors).sum();
    let once = rows
        .iter()
        .all(|r| r.service.terminal_ok == r.service.terminal_total as i64);
    println!(
        "  errors {errors} ({}), terminal exactly once: {}",
        verdict(errors == 0),
        verdict(once)
    );
    println!();
    println!(
        "notes: service pool DATABASE_MAX_CONNECTIONS={POOL_SIZE}; {WARMUP} untimed warm-up callbacks first, then ANALYZE; \
         pgbench -M prepared -n -j 2 -t {REQUESTS}/clients, same transaction, service stopped"
    );
    for row in rows {
        println!(
            "  {} senders: {:.2} s wall; {} copies sent again answered 200 `duplicate`; {} answered 200 neither `applied` nor `duplicate`; {} results or events waited for follow-up work at its end, drained in {:.1} s; \
             pgbench processed {} (latency average {}), {} of its jobs succeeded once",
            row.service.senders,
            row.service.run.seconds,
            row.service.run.duplicates,
            row.service.run.not_applied,
            row.service.custody_drain.0,
            row.service.custody_drain.1,
            row.pgbench.processed,
            row.pgbench.latency_ms,
            row.pgbench_terminal_ok
        );
        let per = |seconds: f64| seconds * 1e6 / row.service.run.requests.max(1) as f64;
        let c = row.service.run_cpu;
        println!(
            "    CPU per callback during the run: service {:.0} us, PostgreSQL {:.0} us, sender {:.0} us; \
             {:.2} cores busy, {:.2} of them other processes",
            per(c.service),
            per(c.postgres),
            per(c.own),
            c.machine / c.wall.max(1e-9),
            c.other_cores()
        );
        let d = row.service.drain_cpu;
        println!(
            "    CPU per callback while follow-up work drained after it: service {:.0} us, PostgreSQL {:.0} us; \
             {:.2} cores busy, {:.2} of them other processes",
            per(d.service),
            per(d.postgres),
            d.machine / d.wall.max(1e-9),
            d.other_cores()
        );
        let p = row.pgbench_cpu;
        println!(
            "    CPU per pgbench transaction: PostgreSQL {:.0} us, pgbench {:.0} us; {:.2} cores busy, {:.2} of them other processes",
            p.postgres * 1e6 / REQUESTS as f64,
            p.children * 1e6 / REQUESTS as f64,
            p.machine / p.wall.max(1e-9),
            p.other_cores()
        );
        println!(
            "    callback batches: {}",
            row.service.batches.describe(1.0)
        );
        println!(
            "    batch transactions, ms: {}",
            row.service.batch_seconds.describe(1000.0)
        );
        println!(
            "    statements: {:.1} per callback; the costliest (calls per callback, us per callback):",
            row.service.statements.calls as f64 / row.service.run.requests.max(1) as f64
        );
        for (calls, ms, query) in &row.service.statements.top {
            println!(
                "      {:>6.2} {:>7.1}  {query}",
                *calls as f64 / row.service.run.requests.max(1) as f64,
                ms * 1000.0 / row.service.run.requests.max(1) as f64
            );
        }
        if let Some(error) = &row.service.run.first_error {
            println!("    first error: {error}");
        }
    }
    println!(
        "jobs indexes after the service runs: {}",
        measured.index_reads
    );
    println!();
}
