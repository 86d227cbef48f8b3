//! `cargo xtask bench-requests`: the service's own latency on `POST /avatars/{id}/train` and
//! `POST /avatars/{id}/generations`, beyond the time the database spends on them.
//!
//! Builds the release binary, starts a private PostgreSQL with `pg_stat_statements` loaded and
//! an in-process fal simulator, creates 16 tenants with a key each, seeds avatars straight into
//! the database (avatars of kind `style` in `ready` with ten stored photos, one fresh avatar
//! per training request since an avatar has one active training at most; and 4 `trained`
//! avatars with a LoRA model per tenant for the generations) with their files in the blob store
//! (512x512 JPEGs, a 256 KiB LoRA), and starts `avatars serve`.
//! Then, at 1, 16 and 64 concurrent callers (or those given: `cargo xtask bench-requests 16`)
//! sharing one keep-alive client, it sends the train and generation requests, each to the
//! next tenant in turn with that tenant's key (a tenant's inserts take its quota lock, so one
//! tenant alone would measure that lock).
//!
//! What a request does: the API key check (the key cache, or a read of `api_keys`), the
//! avatar read (with its photos and their set report for a training; with its model for a
//! generation), and one transaction that stores the job (or the generation and its items),
//! its history and its outbox event; it answers 202. Nothing is sent to fal in the request:
//! the submit worker uploads and submits afterwards. The simulator answers at once, and runs
//! its work at a hundredth of fal's pace so nothing finishes (and no callback arrives) during
//! the runs: the background work left is the submits the requests cause.
//!
//! Database time, per request: the service runs with `SERVER_TIMING=true`, so each answer says
//! how long its own statements took (`db`, as sqlx times them: sent until the last row is
//! read, the commit included) and how long the service spent outside them (`app`). `beyond db
//! p50/p99` are percentiles over the requests of the latency the caller saw minus that
//! request's own database time: the service's own time (HTTP, JSON, the key check, waiting for
//! a pool connection or for a core) plus the loopback network and the caller's client. `app
//! p50/p99` are the service's own measure of the same, without the network and the client.
//!
//! The run's whole database load: `pg_stat_statements` is reset before each run and read after
//! it; `db ms/req` is the `total_exec_time` of every statement the service ran in the run
//! (requests and the background submits they caused) divided by the requests answered, and
//! `stmts/req` their calls likewise. `key reads/req` counts the reads of `api_keys` by hash.
//! With the key cache on, each run's progress line is followed by its statements, most called
//! first, with calls and execution time per request: where the round trips go.
//!
//! Each configuration runs twice, back to back, with the API key cache (the default settings)
//! and without it (`API_KEY_CACHE_TTL=0`, every request reads its key): the yardstick.
//!
//! `--against <avatars binary>` measures an earlier build too, right after this one in each
//! mode, so two builds are compared within one run (absolute numbers drift between runs). A
//! build without `SERVER_TIMING` shows `-` where per-request timings would be.
//!
//! The callers share the machine's cores with the service and PostgreSQL, so they run
//! optimised: a debug `cargo xtask` builds the release xtask and hands the benchmark to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fal_sim::{FalSim, SimConfig};
use pgcluster::{Cluster, ClusterOptions};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::bench_photos::{check, free_port, release_binary, ServerGuard};
use crate::bench_support::{
    against_args, interrupted, log_tail, percentile_ms, postmaster_pid, run_optimised, small_jpegs,
    split_against, stop_on_ctrl_c, wait_ready, Cpu, WorkDir, INTERRUPTED,
};

/// Concurrent callers of the runs.
const CALLERS: [usize; 3] = [1, 16, 64];
/// Untimed requests of each kind after each start, so connection set-up stays out.
const WARMUP: usize = 64;
/// Tenants the requests are spread over, each with its own key.
const TENANTS: usize = 16;
/// Avatars with a model, per tenant, the generation requests take in turn.
const TRAINED_AVATARS: usize = 4;
/// The service's pool: half the largest caller count, as `bench-webhooks`.
const POOL_SIZE: u32 = 32;
/// A run stops starting requests after this long, whatever is left.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// The two configurations compared: the default cache, and none.
const MODES: [(&str, Option<&str>); 2] = [("cache", None), ("no cache", Some("0"))];

/// Requests of one run with this many callers.
fn requests_at(callers: usize) -> usize {
    match callers {
        1 => 300,
        16 => 1200,
        _ => 2400,
    }
}

const USAGE: &str = "usage: cargo xtask bench-requests [--against <avatars binary>] [callers...]";

pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let (against, callers) = split_against(args)?;
    let callers = if callers.is_empty() {
        CALLERS.to_vec()
    } else {
        callers
            .iter()
            .map(|a| a.parse::<usize>().ok().filter(|n| *n > 0))
            .collect::<Option<Vec<_>>>()
            .ok_or(USAGE)?
    };
    if cfg!(debug_assertions) {
        let mut forwarded = against_args(against.as_deref());
        forwarded.extend(callers.iter().map(|c| c.to_string().into()));
        return run_optimised(root, "bench-requests", &forwarded);
    }
    stop_on_ctrl_c();
    bench(root, against, &callers)
}

struct Setup {
    /// `(label, avatars binary)` of each build measured: this one, and the `--against` one.
    builds: Vec<(&'static str, PathBuf)>,
    work: PathBuf,
    database_url: String,
    /// `(tenant name, key)` of every tenant.
    keys: Vec<(String, String)>,
    callers: Vec<usize>,
    postmaster: u32,
}

fn bench(root: &Path, against: Option<PathBuf>, callers: &[usize]) -> Result<(), String> {
    let binary = release_binary(root)?;
    let mut builds = vec![("this", binary.clone())];
    builds.extend(against.map(|earlier| ("against", earlier)));
    // Dropped after the cluster (declared before it), so the server is down before its files go.
    let work = WorkDir::fresh(crate::target_dir(root).join("bench-requests"))?;
    let options = ClusterOptions {
        extra_settings: vec![
            "shared_preload_libraries = 'pg_stat_statements'".into(),
            "pg_stat_statements.track = 'top'".into(),
        ],
        ..ClusterOptions::test()
    };
    let mut cluster = Cluster::start(&work.0.join("pg"), &options).map_err(|e| e.to_string())?;
    cluster
        .ensure_database("bench")
        .map_err(|e| e.to_string())?;
    let database_url = cluster.url("bench");
    let cli = |args: &[&str], what: &str| {
        check(
            Command::new(&binary)
                .args(args)
                .env("DATABASE_URL", &database_url)
                .env("RUST_LOG", "warn")
                .output(),
            what,
        )
    };
    cli(&["migrate"], "avatars migrate")?;
    let mut keys = Vec::new();
    for n in 0..TENANTS {
        let tenant = format!("bench-{n}");
        let key = cli(
            &["api-keys", "create", "--tenant", &tenant],
            "avatars api-keys create",
        )?;
        keys.push((
            tenant,
            String::from_utf8_lossy(&key.stdout).trim().to_string(),
        ));
    }
    let setup = Setup {
        builds,
        work: work.0.clone(),
        database_url: database_url.clone(),
        keys,
        callers: callers.to_vec(),
        postmaster: postmaster_pid(&cluster)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let rows = runtime.block_on(bench_async(&setup))?;
    drop(runtime);
    print_table(&rows);
    cluster.stop().map_err(|e| e.to_string())?;
    Ok(())
}

/// What one run measured.
struct Row {
    mode: &'static str,
    build: &'static str,
    endpoint: &'static str,
    callers: usize,
    requests: usize,
    errors: usize,
    first_error: Option<String>,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Latency minus the request's own database time, p50 and p99 (`None`: a build that does
    /// not report its timings).
    beyond_ms: Option<(f64, f64)>,
    /// The service's own time outside the database, as it reports it, p50 and p99.
    app_ms: Option<(f64, f64)>,
    db_ms: f64,
    statements: f64,
    key_reads: f64,
    /// CPU over the run: the service's, PostgreSQL's and this process's (callers and fal-sim).
    cpu: Cpu,
}

async fn bench_async(setup: &Setup) -> Result<Vec<Row>, String> {
    let sim = FalSim::start(SimConfig {
        time_factor: 100.0,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| format!("starting fal-sim: {e}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&setup.database_url)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
        .map_err(|e| format!("loading pg_stat_statements: {e}"))?;
    // Requests go to the tenants in turn, so the first tenants take one more when a count
    // does not divide evenly: each tenant gets the larger share of every count.
    let per_run: usize = std::iter::once(WARMUP)
        .chain(setup.callers.iter().map(|c| requests_at(*c)))
        .map(|count| count.div_ceil(TENANTS))
        .sum();
    let per_tenant = per_run * MODES.len() * setup.builds.len();
    eprintln!(
        "bench: seeding {} trainable avatars (10 photos each) and {} trained ones over {TENANTS} tenants",
        per_tenant * TENANTS,
        TRAINED_AVATARS * TENANTS
    );
    let photos = small_jpegs(10)?;
    let mut tenants = Vec::new();
    for (name, key) in &setup.keys {
        let tenant: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
            .bind(name)
            .fetch_one(&pool)
            .await
            .map_err(|e| format!("finding the bench tenant: {e}"))?;
        tenants.push(TenantAvatars {
            authorization: format!("Bearer {key}"),
            trainable: seed_trainable(&pool, tenant, per_tenant, &photos).await?,
            trained: seed_trained(&pool, tenant, TRAINED_AVATARS).await?,
        });
    }
    let trainable: Vec<Uuid> = tenants.iter().flat_map(|t| t.trainable.clone()).collect();
    seed_blobs(
        &setup.work.join("blobs"),
        &setup.work.join("photos"),
        &photos,
        &trainable,
    )?;

    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let ring = service::secrets::KeyRing::generate("bench").1;
    let mut rows = Vec::new();
    // Each mode runs every build back to back, so builds are compared within one run.
    let runs = MODES.iter().flat_map(|&(mode, ttl)| {
        setup
            .builds
            .iter()
            .map(move |(build, binary)| (mode, ttl, *build, binary))
    });
    for (mode, ttl, build, binary) in runs {
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let log_path = setup
            .work
            .join(format!("serve-{}-{build}.log", mode.replace(' ', "-")));
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut serve = Command::new(binary);
        serve
            .arg("serve")
            .env("DATABASE_URL", &setup.database_url)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("PUBLIC_BASE_URL", &base)
            .env("FAL_KEY", sim.default_key().unwrap_or_default())
            .env("SECRETS_KEYS", ring.expose_secret())
            .env("FAL_QUEUE_URL", sim.queue_url().as_str())
            .env("FAL_REST_URL", sim.rest_url().as_str())
            .env("FAL_CDN_URL", sim.cdn_url().as_str())
            .env("FAL_JWKS_URL", sim.jwks_url().as_str())
            .env("STORAGE_URL", setup.work.join("blobs"))
            .env("RUST_LOG", "warn")
            .env("SERVER_TIMING", "true")
            .env("DATABASE_MAX_CONNECTIONS", POOL_SIZE.to_string())
            .env("API_KEY_RATE_PER_SECOND", "100000")
            .env("API_KEY_RATE_BURST", "100000")
            .env("TENANT_MAX_ACTIVE_TRAININGS", "10000")
            .env("TENANT_MAX_ACTIVE_GENERATIONS", "100000")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some(ttl) = ttl {
            serve.env("API_KEY_CACHE_TTL", ttl);
        }
        let mut server = ServerGuard(serve.spawn().map_err(|e| e.to_string())?);
        let server_pid = Some(server.0.id());
        let with_log = |message: String| format!("{message}\n{}", log_tail(&log_path));
        wait_ready(&client, &base, &mut server)
            .await
            .map_err(with_log)?;

        eprintln!("bench [{mode}, {build} build]: warm-up");
        let warm_train = train_calls(&base, &mut tenants, WARMUP);
        let warm_generate = generation_calls(&base, &tenants, WARMUP);
        for calls in [warm_train, warm_generate] {
            let warm = fire(&client, calls, 16).await;
            if warm.errors > 0 {
                return Err(with_log(format!(
                    "warm-up: {} requests failed, first: {}",
                    warm.errors,
                    warm.first_error.unwrap_or_default()
                )));
            }
        }
        // Statistics, as autovacuum keeps them in a running database: the seeded tables were
        // filled seconds ago, and plans cached without statistics would measure the bench's
        // own cold start.
        settle(&pool).await?;
        sqlx::query("ANALYZE")
            .execute(&pool)
            .await
            .map_err(|e| format!("analyzing the seeded tables: {e}"))?;
        for &callers in &setup.callers {
            let count = requests_at(callers);
            let train = train_calls(&base, &mut tenants, count);
            let generate = generation_calls(&base, &tenants, count);
            for (endpoint, calls) in [("train", train), ("generations", generate)] {
                interrupted()?;
                settle(&pool).await?;
                eprintln!(
                    "bench [{mode}, {build} build]: {count} {endpoint} requests from {callers} callers"
                );
                sqlx::query("SELECT pg_stat_statements_reset()")
                    .execute(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                let origin = Instant::now();
                let before = Cpu::sample(server_pid, setup.postmaster, origin, origin);
                let run = fire(&client, calls, callers).await;
                let cpu =
                    Cpu::sample(server_pid, setup.postmaster, Instant::now(), origin).since(before);
                let (db_ms, statements, key_reads) = database_time(&pool).await?;
                if ttl.is_none() {
                    print_statements(&pool, count).await?;
                }
                let answered = run.latencies.len().max(1) as f64;
                rows.push(Row {
                    mode,
                    build,
                    endpoint,
                    callers,
                    requests: run.latencies.len(),
                    errors: run.errors,
                    first_error: run.first_error,
                    per_second: run.latencies.len() as f64 / run.seconds,
                    p50_ms: percentile_ms(&run.latencies, 0.50),
                    p99_ms: percentile_ms(&run.latencies, 0.99),
                    beyond_ms: percentiles(&run.beyond_db),
                    app_ms: percentiles(&run.app),
                    db_ms: db_ms / answered,
                    statements: statements / answered,
                    key_reads: key_reads / answered,
                    cpu,
                });
            }
        }
        server.stop();
    }
    report_background(&pool).await?;
    pool.close().await;
    sim.shutdown().await;
    Ok(rows)
}

/// Waits (at most a minute) until the submits the last run caused are done: no job waits for
/// its submit, or the number waiting has not moved for a second (generation items held back
/// by their tenant's limit on running generations wait until one finishes, which fal-sim at a
/// hundredth of fal's pace does not do during the benchmark).
async fn settle(pool: &PgPool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut unchanged) = (-1_i64, 0);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE status IN ('pending', 'uploading')",
        )
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())?;
        unchanged = if waiting == last { unchanged + 1 } else { 0 };
        last = waiting;
        if waiting == 0 || unchanged >= 5 || Instant::now() > deadline {
            return Ok(());
        }
        interrupted()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints where the jobs the requests created ended up: the background submits they caused are
/// part of what was measured only if they went through (`submitted`), not if they failed.
async fn report_background(pool: &PgPool) -> Result<(), String> {
    let counts: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT kind, status || coalesce(' (' || error_code || ')', ''), count(*)
         FROM jobs WHERE created_at > now() - interval '1 day' AND fal_request_id IS DISTINCT FROM id::text
         GROUP BY 1, 2 ORDER BY 1, 3 DESC",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| format!("counting the jobs: {e}"))?;
    let listed: Vec<String> = counts
        .iter()
        .map(|(kind, status, count)| format!("{kind} {status}: {count}"))
        .collect();
    eprintln!(
        "bench: jobs the requests created, by status: {}",
        listed.join(", ")
    );
    Ok(())
}

/// The statements of the run just ended, most called first, per request: calls and execution
/// time (background work the requests caused included), to see where round trips go.
async fn print_statements(pool: &PgPool, requests: usize) -> Result<(), String> {
    let mut statements = crate::bench_support::service_statements(pool).await?;
    // Most called first; the sort is stable, so the costliest first among equals.
    statements.sort_by_key(|(calls, _, _)| std::cmp::Reverse(*calls));
    let requests = requests.max(1) as f64;
    eprintln!("    statements per request, most called first (calls, us):");
    for (calls, total_ms, query) in statements.into_iter().take(14) {
        eprintln!(
            "    {:6.2} {:7.1}  {query}",
            calls as f64 / requests,
            total_ms * 1000.0 / requests
        );
    }
    Ok(())
}

/// `(total_exec_time in ms, calls, reads of api_keys by hash)` of the service's statements
/// since the last reset.
async fn database_time(pool: &PgPool) -> Result<(f64, f64, f64), String> {
    sqlx::query_as(
        "SELECT coalesce(sum(total_exec_time), 0)::float8,
                coalesce(sum(calls), 0)::float8,
                coalesce(sum(calls) FILTER (WHERE query LIKE '%FROM api_keys WHERE key_hash%'), 0)::float8
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND query NOT LIKE '%pg_stat_statements%'
           AND query NOT LIKE '%FROM jobs WHERE status IN (''pending'', ''uploading'')%'",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| format!("reading pg_stat_statements: {e}"))
}

/// A tenant's key and the avatars seeded for it.
struct TenantAvatars {
    authorization: String,
    /// Not trained yet; each training takes one for good.
    trainable: Vec<Uuid>,
    trained: Vec<Uuid>,
}

/// One request to send.
struct Call {
    url: String,
    authorization: String,
    body: &'static str,
}

/// `count` trainings, each of a fresh avatar of the next tenant in turn.
fn train_calls(base: &str, tenants: &mut [TenantAvatars], count: usize) -> Vec<Call> {
    let mut calls = Vec::with_capacity(count);
    for n in 0..count {
        let tenant = &mut tenants[n % TENANTS];
        if let Some(id) = tenant.trainable.pop() {
            calls.push(Call {
                url: format!("{base}/avatars/{id}/train"),
                authorization: tenant.authorization.clone(),
                body: "{}",
            });
        }
    }
    calls
}

/// `count` generations, with the next tenant's trained avatars in turn.
fn generation_calls(base: &str, tenants: &[TenantAvatars], count: usize) -> Vec<Call> {
    (0..count)
        .map(|n| {
            let tenant = &tenants[n % TENANTS];
            let avatar = tenant.trained[(n / TENANTS) % tenant.trained.len()];
            Call {
                url: format!("{base}/avatars/{avatar}/generations"),
                authorization: tenant.authorization.clone(),
                body: r#"{"prompt":"a portrait in the bench style"}"#,
            }
        })
        .collect()
}

struct RunResult {
    latencies: Vec<Duration>,
    /// Per request: its latency minus its own database time.
    beyond_db: Vec<Duration>,
    /// Per request: the service's own time outside the database.
    app: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    seconds: f64,
}

/// Sends every call from `callers` concurrent tasks sharing one keep-alive client; a call
/// counts when answered 2xx.
async fn fire(client: &reqwest::Client, calls: Vec<Call>, callers: usize) -> RunResult {
    let calls = Arc::new(calls);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, calls, next) = (client.clone(), calls.clone(), next.clone());
            tokio::spawn(async move {
                let (mut latencies, mut beyond_db, mut app) = (Vec::new(), Vec::new(), Vec::new());
                let (mut errors, mut first_error) = (0, None);
                loop {
                    if INTERRUPTED.load(Ordering::Relaxed) || started.elapsed() > RUN_LIMIT {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(call) = calls.get(i) else { break };
                    let sent = Instant::now();
                    let outcome = match client
                        .post(&call.url)
                        .header("authorization", &call.authorization)
                        .header("content-type", "application/json")
                        .body(call.body)
                        .send()
                        .await
                    {
                        Ok(response) => {
                            let status = response.status();
                            let timing = server_timing(response.headers());
                            match response.bytes().await {
                                Ok(_) if status.is_success() => Ok(timing),
                                Ok(body) => Err(format!(
                                    "HTTP {status}: {}",
                                    String::from_utf8_lossy(&body)
                                )),
                                Err(error) => Err(format!("reading the answer: {error}")),
                            }
                        }
                        Err(error) => Err(error.to_string()),
                    };
                    let took = sent.elapsed();
                    match outcome {
                        Ok(timing) => {
                            latencies.push(took);
                            if let Some((db, own)) = timing {
                                beyond_db.push(took.saturating_sub(db));
                                app.push(own);
                            }
                        }
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert(error);
                        }
                    }
                }
                (latencies, beyond_db, app, errors, first_error)
            })
        })
        .collect();
    let mut result = RunResult {
        latencies: Vec::new(),
        beyond_db: Vec::new(),
        app: Vec::new(),
        errors: 0,
        first_error: None,
        seconds: 0.0,
    };
    for task in tasks {
        match task.await {
            Ok((mut latencies, mut beyond_db, mut app, errors, first_error)) => {
                result.latencies.append(&mut latencies);
                result.beyond_db.append(&mut beyond_db);
                result.app.append(&mut app);
                result.errors += errors;
                if result.first_error.is_none() {
                    result.first_error = first_error;
                }
            }
            Err(error) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert(format!("caller task: {error}"));
            }
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    result.latencies.sort();
    result.beyond_db.sort();
    result.app.sort();
    result
}

/// p50 and p99 of sorted durations, in ms; `None` when there are none.
fn percentiles(sorted: &[Duration]) -> Option<(f64, f64)> {
    (!sorted.is_empty()).then(|| (percentile_ms(sorted, 0.50), percentile_ms(sorted, 0.99)))
}

/// `(db, app)` of an answer's `Server-Timing` header.
fn server_timing(headers: &reqwest::header::HeaderMap) -> Option<(Duration, Duration)> {
    let header = headers.get("server-timing")?.to_str().ok()?;
    api::server_timing::Timing::parse(header).map(|timing| (timing.database, timing.app))
}

/// Bytes of the seeded LoRA file.
const LORA_BYTES: usize = 256 * 1024;
/// Side of the seeded photos ([`small_jpegs`]), in pixels.
const PHOTO_SIDE: i32 = 512;

/// The files the seeded rows name, in the local blob store the service reads (a key is a path
/// below it): `photos`, hard-linked as the photos of every trainable avatar
/// (`bench/<avatar>/<1..>`; a photo's key is unique), and the LoRA every trained avatar's
/// model shares (`bench/lora`). Without them every submit would fail at its first read, and
/// the background work the requests cause would not be measured.
fn seed_blobs(
    blobs: &Path,
    originals: &Path,
    photos: &[Vec<u8>],
    trainable: &[Uuid],
) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    std::fs::create_dir_all(originals).map_err(|e| io("creating the photo directory", e))?;
    for (i, photo) in (1..).zip(photos) {
        std::fs::write(originals.join(format!("{i}")), photo)
            .map_err(|e| io("writing a bench photo", e))?;
    }
    for avatar in trainable {
        let dir = blobs.join("bench").join(avatar.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| io("creating a photo directory", e))?;
        for i in 1..=photos.len() {
            std::fs::hard_link(originals.join(format!("{i}")), dir.join(format!("{i}")))
                .map_err(|e| io("linking a bench photo", e))?;
        }
    }
    let lora: Vec<u8> = (0..LORA_BYTES).map(|n| (n % 251) as u8).collect();
    std::fs::write(blobs.join("bench").join("lora"), lora).map_err(|e| io("writing the LoRA", e))
}

/// Avatars ready to train: kind `style` (no face needed), one stored photo for each of
/// `photos` (their files are written by [`seed_blobs`]).
async fn seed_trainable(
    pool: &PgPool,
    tenant: Uuid,
    count: usize,
    photos: &[Vec<u8>],
) -> Result<Vec<Uuid>, String> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO avatars (id, tenant_id, name, kind, trigger_phrase, status, photo_count)
         SELECT a, $1, 'bench avatar ' || n, 'style', 'bench_' || n, 'ready', 10
         FROM UNNEST($2::uuid[]) WITH ORDINALITY AS x(a, n)",
    )
    .bind(tenant)
    .bind(&ids)
    .execute(&mut *tx)
    .await
    .map_err(|e| format!("seeding avatars: {e}"))?;
    sqlx::query(
        "INSERT INTO photos (id, tenant_id, avatar_id, state, file_name, format, width, height,
             bytes, sha256, perceptual_hash, blob_key)
         SELECT gen_random_uuid(), $1, a, 'stored', 'photo-' || i || '.jpg', 'jpeg', $3, $3,
             bytes, md5(a::text || i) || md5(i || a::text),
             (random() * 9.2e18)::bigint - 4600000000000000000, 'bench/' || a || '/' || i
         FROM UNNEST($2::uuid[]) AS x(a), UNNEST($4::int8[]) WITH ORDINALITY AS p(bytes, i)",
    )
    .bind(tenant)
    .bind(&ids)
    .bind(PHOTO_SIDE)
    .bind(photos.iter().map(|p| p.len() as i64).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .map_err(|e| format!("seeding photos: {e}"))?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(ids)
}

/// Avatars in `trained` with a LoRA model from a succeeded training.
async fn seed_trained(pool: &PgPool, tenant: Uuid, count: usize) -> Result<Vec<Uuid>, String> {
    let avatars: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    let jobs: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    let models: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    let params = serde_json::json!({ "steps": 1000, "learning_rate": 0.0005 });
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    for (what, statement) in [
        (
            "avatars",
            "INSERT INTO avatars (id, tenant_id, name, kind, trigger_phrase, status, photo_count)
             SELECT a, $1, 'bench trained ' || n, 'style', 'bench_trained_' || n, 'trained', 10
             FROM UNNEST($2::uuid[]) WITH ORDINALITY AS x(a, n)",
        ),
        (
            "trainings",
            "INSERT INTO jobs (id, tenant_id, avatar_id, kind, status, trainer, endpoint, preset,
                 params, trigger_phrase, estimated_cost_usd, fal_request_id, fence,
                 submit_started_at, submitted_at, finished_at, deadline_at, created_at)
             SELECT j, $1, a, 'training', 'succeeded', 'fast_lora', 'fal-ai/flux-lora-fast-training',
                 'balanced', $5, 'bench_trained_' || n, 2.0, j::text, 1, now(), now(), now(),
                 now() + interval '1 day', now() - interval '1 minute'
             FROM UNNEST($2::uuid[], $3::uuid[]) WITH ORDINALITY AS x(a, j, n)",
        ),
        (
            "models",
            "INSERT INTO models (id, tenant_id, avatar_id, training_id, model_type,
                 trigger_phrase, artifact_key)
             SELECT m, $1, a, j, 'lora', 'bench_trained_' || n, 'bench/lora'
             FROM UNNEST($2::uuid[], $3::uuid[], $4::uuid[]) WITH ORDINALITY AS x(a, j, m, n)",
        ),
        (
            "current models",
            "UPDATE avatars SET current_model_id = x.m
             FROM UNNEST($2::uuid[], $4::uuid[]) AS x(a, m)
             WHERE avatars.id = x.a AND avatars.tenant_id = $1",
        ),
    ] {
        sqlx::query(statement)
            .bind(tenant)
            .bind(&avatars)
            .bind(&jobs)
            .bind(&models)
            .bind(&params)
            .execute(&mut *tx)
            .await
            .map_err(|e| format!("seeding {what}: {e}"))?;
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(avatars)
}

fn print_table(rows: &[Row]) {
    // Each configuration's builds side by side.
    let mut order: Vec<&Row> = rows.iter().collect();
    order.sort_by_key(|row| (row.mode, row.callers, row.endpoint, row.build != "this"));
    let pair = |value: Option<(f64, f64)>| match value {
        Some((p50, p99)) => (format!("{p50:.2}"), format!("{p99:.2}")),
        None => ("-".to_string(), "-".to_string()),
    };
    println!();
    println!(
        "request overhead: release build, 16 tenants with a key each, fal-sim answering at once; \
         beyond db = per request, its latency - its own database time (Server-Timing db); \
         app = the service's own time outside the database (Server-Timing app; - for a build \
         without it); db ms/req = all statements of the run (background included) / requests"
    );
    println!(
        "{:<9} {:<8} {:<12} {:>7} {:>8} {:>6} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "mode",
        "build",
        "endpoint",
        "callers",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "db ms/req",
        "stmts/req",
        "key reads",
        "beyond p50",
        "beyond p99",
        "app p50",
        "app p99"
    );
    for row in &order {
        let (beyond_p50, beyond_p99) = pair(row.beyond_ms);
        let (app_p50, app_p99) = pair(row.app_ms);
        println!(
            "{:<9} {:<8} {:<12} {:>7} {:>8} {:>6} {:>8.0} {:>8.2} {:>8.2} {:>10.3} {:>10.1} {:>10.2} {:>10} {:>10} {:>8} {:>8}",
            row.mode,
            row.build,
            row.endpoint,
            row.callers,
            row.requests,
            row.errors,
            row.per_second,
            row.p50_ms,
            row.p99_ms,
            row.db_ms,
            row.statements,
            row.key_reads,
            beyond_p50,
            beyond_p99,
            app_p50,
            app_p99,
        );
    }
    for row in order.iter().filter(|row| row.errors > 0) {
        println!(
            "{} ({} build) {} at {} callers: {} errors, first: {}",
            row.mode,
            row.build,
            row.endpoint,
            row.callers,
            row.errors,
            row.first_error.as_deref().unwrap_or("")
        );
    }
    println!("(key reads: reads of api_keys by hash per request)");
    println!();
    println!(
        "CPU per request over each run (ms; the machine has {} cores; callers and fal-sim share this process)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<9} {:<8} {:<12} {:>7} {:>8} {:>9} {:>8} {:>8} {:>12}",
        "mode",
        "build",
        "endpoint",
        "callers",
        "service",
        "postgres",
        "callers",
        "other",
        "cores busy"
    );
    for row in &order {
        let per = |seconds: f64| seconds * 1e3 / row.requests.max(1) as f64;
        let cpu = &row.cpu;
        println!(
            "{:<9} {:<8} {:<12} {:>7} {:>8.3} {:>9.3} {:>8.3} {:>8.3} {:>12.2}",
            row.mode,
            row.build,
            row.endpoint,
            row.callers,
            per(cpu.service),
            per(cpu.postgres),
            per(cpu.own),
            per(cpu.other_cores() * cpu.wall),
            cpu.machine / cpu.wall.max(1e-9),
        );
    }
    println!();
}
