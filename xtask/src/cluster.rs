//! `cargo xtask cluster [--small]`: a local production-shaped cluster, killed while it works.
//!
//! Three `avatars serve` processes share one PostgreSQL, one S3-compatible server (moto, with
//! authentication on) and one `fal-sim` process, each a separate OS process as in production.
//! A driver sends the work of one tenant round-robin through the replicas: avatars, photo
//! uploads, trainings, then generations with the trained avatars. Meanwhile a killer SIGKILLs a
//! replica at moments chosen by what the cluster is doing (a photo upload in flight, a job being
//! uploaded or submitted to fal, jobs whose fal callbacks are arriving, outbound deliveries
//! pending) and restarts it on the same address. Two webhook endpoints registered through the
//! API point at a receiver in this process, which checks every delivery's signature and
//! records it by `webhook-id`.
//!
//! When every job has finished and every event has been delivered it checks, and prints as a
//! table: every training and generation terminal, with exactly one terminal transition per job
//! and one terminal event per resource; no job submitted to fal twice (fal-sim's request log,
//! by the job named in each submit's webhook URL); every event delivered to every endpoint
//! (and how many were sent again after a kill, which receivers deduplicate by `webhook-id`);
//! every photo, LoRA file and image the database references present in the bucket; and that no
//! job or endpoint waited on an expired lease longer than the lease itself. Last, each replica
//! is stopped with SIGTERM and its drain time printed.
//!
//! `--small` runs the same code with a few jobs and one kill (during a photo upload); `cargo
//! xtask test` runs it after the suite.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use pgcluster::{Cluster, ClusterOptions};
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::moto::Moto;

/// The size of a run.
#[derive(Clone, Copy)]
struct Plan {
    trainings: usize,
    generations: usize,
    /// Avatars worked on at once.
    concurrency: usize,
    /// `Some(n)`: exactly n kills; `None`: keep killing until the work is done.
    kills: Option<usize>,
    /// Gives up after this long.
    deadline: Duration,
}

const FULL: Plan = Plan {
    trainings: 50,
    generations: 200,
    concurrency: 10,
    kills: None,
    deadline: Duration::from_secs(900),
};

const SMALL: Plan = Plan {
    trainings: 3,
    generations: 6,
    concurrency: 3,
    kills: Some(1),
    deadline: Duration::from_secs(80),
};

const REPLICAS: usize = 3;
/// Set by Ctrl-C or SIGTERM: the driver and the killer stop, and every process is stopped.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Photos per avatar (the cluster's `AVATAR_MIN_PHOTOS`).
const PHOTOS: usize = 4;
/// The replicas' job lease (`JOB_LEASE`), short so a killed worker's jobs move on quickly.
const JOB_LEASE_SECS: u64 = 10;
const WEBHOOK_LEASE_SECS: u64 = 5;
const ENDPOINTS: [&str; 2] = ["a", "b"];
const TRAINING_TERMINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "timed_out"];
const GENERATION_TERMINAL: [&str; 4] = ["succeeded", "partially_succeeded", "failed", "cancelled"];

pub fn run(root: &Path, small: bool) -> Result<(), String> {
    let plan = if small { SMALL } else { FULL };
    // Under `cargo xtask test` a handler is already set; its run has ended by now.
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    crate::moto::ensure()?;
    let bins = build(root)?;
    let work = root
        .join("target")
        .join(format!("xtask-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    // PostgreSQL runs as an unprivileged user when this runs as root: it must reach its data.
    let _ = Command::new("chmod").arg("755").arg(&work).status();

    let mut pg = Cluster::start(&work.join("pg"), &ClusterOptions::test())
        .map_err(|e| format!("starting PostgreSQL: {e}"))?;
    let database_url = pg.url("postgres");
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let outcome = runtime.block_on(run_cluster(&work, &bins, &database_url, plan));
    drop(runtime);
    let _ = pg.stop();
    drop(pg);
    match outcome {
        Ok(report) => {
            report.print(plan, started.elapsed());
            if report.failures().is_empty() {
                let _ = std::fs::remove_dir_all(&work);
                Ok(())
            } else {
                Err(format!(
                    "the cluster lost or repeated work: {}; logs kept in {}",
                    report.failures().join("; "),
                    work.display()
                ))
            }
        }
        Err(error) => Err(format!("{error}; logs kept in {}", work.display())),
    }
}

struct Binaries {
    avatars: PathBuf,
    fal_sim: PathBuf,
}

fn build(root: &Path) -> Result<Binaries, String> {
    eprintln!("cluster: building avatars and fal-sim");
    let status = crate::cargo()
        .current_dir(root)
        .args([
            "build", "-q", "-p", "api", "--bin", "avatars", "-p", "fal-sim", "--bin", "fal-sim",
        ])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("building avatars and fal-sim failed".into());
    }
    let target = crate::target_dir(root);
    Ok(Binaries {
        avatars: target.join("debug/avatars"),
        fal_sim: target.join("debug/fal-sim"),
    })
}

/// A child process killed (SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `avatars serve` process, restartable on its address.
struct Replica {
    base: String,
    env: Vec<(String, String)>,
    log: PathBuf,
    binary: PathBuf,
    process: Option<Process>,
}

impl Replica {
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.binary)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting avatars serve: {e}"))?;
        self.process = Some(Process(child));
        Ok(())
    }

    fn sigkill(&mut self) {
        self.process = None;
    }

    /// SIGTERM, then the time until the process exited.
    fn drain(&mut self) -> Option<Duration> {
        let mut process = self.process.take()?;
        let started = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(process.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = process.0.wait();
        Some(started.elapsed())
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{base} did not become ready"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the receiver got, per endpoint: deliveries per `webhook-id`, and the bodies.
#[derive(Default)]
struct Received {
    secrets: HashMap<String, Vec<u8>>,
    deliveries: HashMap<String, HashMap<String, u32>>,
    bodies: HashMap<String, Value>,
    bad_signatures: u32,
}

type Receiver = Arc<Mutex<Received>>;

async fn receive(
    State(received): State<Receiver>,
    UrlPath(endpoint): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let mut received = received.lock().unwrap();
    let valid = received.secrets.get(&endpoint).is_some_and(|secret| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&body);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        signatures
            .split(' ')
            .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
    });
    if !valid || id.is_empty() {
        received.bad_signatures += 1;
        return StatusCode::BAD_REQUEST;
    }
    *received
        .deliveries
        .entry(endpoint)
        .or_default()
        .entry(id.clone())
        .or_default() += 1;
    if let Ok(value) = serde_json::from_slice::<Value>(&body) {
        received.bodies.insert(id, value);
    }
    StatusCode::NO_CONTENT
}

/// Where the driver is, for the killer to choose its moments.
#[derive(Default)]
struct Activity {
    /// Photo uploads in flight, per replica.
    uploads: [AtomicUsize; REPLICAS],
    /// Set when the driver has finished (every job terminal).
    done: AtomicBool,
}

/// Shared by the driver's tasks.
struct Ctx {
    http: reqwest::Client,
    bases: Vec<String>,
    key: String,
    next: AtomicUsize,
    activity: Arc<Activity>,
    /// Requests that failed on a killed or restarting replica and went elsewhere.
    failovers: AtomicUsize,
    /// Re-uploads refused as duplicates of photos a killed upload left pending.
    pending_duplicates: AtomicUsize,
    deadline: Instant,
}

impl Ctx {
    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len()
    }

    fn check_deadline(&self) -> Result<(), String> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            Err("interrupted".into())
        } else if Instant::now() > self.deadline {
            Err("the run did not finish before its deadline".into())
        } else {
            Ok(())
        }
    }

    /// Sends on the next replica in turn; `Err` on a transport failure (a killed replica).
    async fn send(
        &self,
        replica: usize,
        method: reqwest::Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<(u16, Value), String> {
        let request = self
            .http
            .request(method, format!("{}{path}", self.bases[replica]))
            .bearer_auth(&self.key);
        let response = build(request).send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// A safe request (GET, or a POST that creates nothing): retried on the next replica until
    /// it gets an answer other than 5xx.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        loop {
            self.check_deadline()?;
            let replica = self.pick();
            let result = self
                .send(replica, method.clone(), path, |r| match body {
                    Some(body) => r.json(body),
                    None => r,
                })
                .await;
            match result {
                Ok((status, value)) if status < 300 => return Ok(value),
                Ok((status, value)) if status < 500 && status != 409 => {
                    return Err(format!("{method} {path}: {status} {value}"))
                }
                _ => {
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// A request that creates something, made safe to repeat: after a failure, `adopt` looks
    /// for what a lost attempt created before it is sent again (with the same idempotency key).
    async fn create<F, Fut>(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
        adopt: F,
    ) -> Result<Value, String>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Value>, String>>,
    {
        let mut failed = false;
        loop {
            self.check_deadline()?;
            if failed {
                if let Some(found) = adopt().await? {
                    return Ok(found);
                }
            }
            let replica = self.pick();
            let result = self
                .send(replica, reqwest::Method::POST, path, |r| {
                    let r = r.json(body);
                    match idempotency_key {
                        Some(key) => r.header("idempotency-key", key),
                        None => r,
                    }
                })
                .await;
            match result {
                Ok((status, value)) if status < 300 => return Ok(value),
                // The key's first attempt is still in flight (or died holding it): again.
                Ok((409, value)) if value["code"] == "idempotency_key_in_use" => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok((status, value)) if status < 500 => {
                    return Err(format!("POST {path}: {status} {value}"))
                }
                _ => {
                    failed = true;
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Polls `path` until its `status` is one of `terminal`.
    async fn wait_terminal(&self, path: &str, terminal: &[&str]) -> Result<Value, String> {
        loop {
            let value = self.call(reqwest::Method::GET, path, None).await?;
            if terminal.contains(&value["status"].as_str().unwrap_or_default()) {
                return Ok(value);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Distinct photo-like JPEGs (512 x 512: random coloured blocks over a gradient), so no two are
/// near-duplicates.
fn photo(avatar: usize, index: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ ((avatar as u64) << 20 | index as u64);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let blocks: Vec<[u8; 3]> = (0..16 * 16)
        .map(|_| {
            let v = next();
            [
                (v % 200) as u8 + 28,
                (v >> 8) as u8 % 200 + 28,
                (v >> 16) as u8 % 200 + 28,
            ]
        })
        .collect();
    let image = image::RgbImage::from_fn(512, 512, |x, y| {
        let [r, g, b] = blocks[(y / 32 * 16 + x / 32) as usize];
        image::Rgb([
            r.saturating_add((x / 16) as u8),
            g.saturating_add((y / 16) as u8),
            b,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&image)
        .expect("encoding a JPEG in memory");
    out
}

/// One avatar's life: created, photos uploaded, trained, then its share of generations.
/// Returns the training id and the generation ids.
async fn avatar_flow(
    ctx: Arc<Ctx>,
    n: usize,
    generations: Vec<usize>,
) -> Result<(Vec<String>, Vec<String>), String> {
    let owner = format!("cluster-{n}");
    let avatar = ctx
        .create(
            "/avatars",
            &json!({"name": format!("cluster {n}"), "kind": "style", "owner_ref": owner}),
            None,
            || async {
                let list = ctx
                    .call(
                        reqwest::Method::GET,
                        &format!("/avatars?owner_ref={owner}"),
                        None,
                    )
                    .await?;
                Ok(list["items"].as_array().and_then(|a| a.first()).cloned())
            },
        )
        .await?;
    let id = avatar["id"]
        .as_str()
        .ok_or("avatar without id")?
        .to_string();

    // Upload until the avatar holds its photos; a retried upload's already stored photos are
    // refused as duplicates. So are the photos a killed upload left reserved (pending, not
    // listed) until the janitor sweeps them: then a fresh set is taken, and counted.
    let mut refusals = 0;
    let mut variant = 0;
    loop {
        ctx.check_deadline()?;
        let listed = ctx
            .call(reqwest::Method::GET, &format!("/avatars/{id}/photos"), None)
            .await?;
        if listed["items"].as_array().map_or(0, Vec::len) >= PHOTOS {
            break;
        }
        let mut form = reqwest::multipart::Form::new();
        for i in 0..PHOTOS {
            let part = reqwest::multipart::Part::bytes(photo(n + 1000 * variant, i))
                .file_name(format!("photo-{i}.jpg"))
                .mime_str("image/jpeg")
                .map_err(|e| e.to_string())?;
            form = form.part("files", part);
        }
        let replica = ctx.pick();
        ctx.activity.uploads[replica].fetch_add(1, Ordering::SeqCst);
        let result = ctx
            .send(
                replica,
                reqwest::Method::POST,
                &format!("/avatars/{id}/photos"),
                |r| r.multipart(form),
            )
            .await;
        ctx.activity.uploads[replica].fetch_sub(1, Ordering::SeqCst);
        match result {
            Ok((status, _)) if status < 300 => {}
            // Every file refused: fine when a lost attempt stored them (the count above
            // says so on the next turn), an error when it happens again.
            Ok((status, value)) if status < 500 => {
                let all_duplicates = value["rejected"].as_array().is_some_and(|rejected| {
                    rejected.len() == PHOTOS
                        && rejected.iter().all(|r| r["code"] == "duplicate_photo")
                });
                let listed = ctx
                    .call(reqwest::Method::GET, &format!("/avatars/{id}/photos"), None)
                    .await?;
                if all_duplicates && listed["items"].as_array().map_or(0, Vec::len) < PHOTOS {
                    ctx.pending_duplicates.fetch_add(1, Ordering::Relaxed);
                    variant += 1;
                }
                refusals += 1;
                if refusals > 3 {
                    return Err(format!("upload to {id}: {status} {value}"));
                }
            }
            _ => {
                ctx.failovers.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // A training that did not succeed (its submit interrupted by a kill, say) is started again,
    // as a caller would.
    let mut training_ids = Vec::new();
    for attempt in 1..=3 {
        let training = ctx
            .create(
                &format!("/avatars/{id}/train"),
                // 100 steps are expected to take 90 s: within FAL_TRAINING_TIMEOUT here.
                &json!({"overrides": {"steps": 100}}),
                Some(&format!("train-{n}-{attempt}")),
                || async {
                    let list = ctx
                        .call(
                            reqwest::Method::GET,
                            &format!("/avatars/{id}/trainings"),
                            None,
                        )
                        .await?;
                    Ok(list["items"].as_array().and_then(|items| {
                        items
                            .iter()
                            .find(|t| !training_ids.iter().any(|known| t["id"] == *known))
                            .cloned()
                    }))
                },
            )
            .await?;
        let training_id = training["id"]
            .as_str()
            .ok_or("training without id")?
            .to_string();
        training_ids.push(training_id.clone());
        let trained = ctx
            .wait_terminal(&format!("/trainings/{training_id}"), &TRAINING_TERMINAL)
            .await?;
        if trained["status"] == "succeeded" {
            break;
        }
    }
    // The avatar is trained once its model is in the service's custody.
    let avatar = ctx
        .wait_terminal(
            &format!("/avatars/{id}"),
            &["trained", "failed", "cancelled"],
        )
        .await?;
    if avatar["status"] != "trained" {
        return Ok((training_ids, Vec::new()));
    }

    let mut generation_ids = Vec::new();
    for g in generations {
        let marker = format!("cluster shot #{g}.");
        let generation = ctx
            .create(
                &format!("/avatars/{id}/generations"),
                &json!({"prompt": marker, "preset": "fast", "width": 512, "height": 512}),
                Some(&format!("generate-{g}")),
                || async {
                    let list = ctx
                        .call(
                            reqwest::Method::GET,
                            &format!("/avatars/{id}/generations"),
                            None,
                        )
                        .await?;
                    Ok(list["items"].as_array().and_then(|items| {
                        items
                            .iter()
                            .find(|item| {
                                item["items"][0]["prompt"]
                                    .as_str()
                                    .is_some_and(|p| p.contains(&marker))
                            })
                            .cloned()
                    }))
                },
            )
            .await?;
        generation_ids.push(
            generation["id"]
                .as_str()
                .ok_or("generation without id")?
                .to_string(),
        );
    }
    for generation in &generation_ids {
        ctx.wait_terminal(&format!("/generations/{generation}"), &GENERATION_TERMINAL)
            .await?;
    }
    Ok((training_ids, generation_ids))
}

/// The moment a kill was aimed at.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Moment {
    Upload,
    Submit,
    WebhookIntake,
    RelayDelivery,
}

impl Moment {
    fn label(self) -> &'static str {
        match self {
            Moment::Upload => "a photo upload in flight to it",
            Moment::Submit => "jobs being uploaded/submitted to fal",
            Moment::WebhookIntake => "fal callbacks arriving",
            Moment::RelayDelivery => "outbound deliveries pending",
        }
    }
}

/// Waits (up to a few seconds) for `moment` to be under way and returns the replica to kill.
async fn aim(moment: Moment, activity: &Activity, db: &sqlx::PgPool) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !activity.done.load(Ordering::SeqCst) {
        let hit =
            match moment {
                Moment::Upload => {
                    let busy: Vec<usize> = (0..REPLICAS)
                        .filter(|r| activity.uploads[*r].load(Ordering::SeqCst) > 0)
                        .collect();
                    if !busy.is_empty() {
                        return Some(busy[rand::thread_rng().gen_range(0..busy.len())]);
                    }
                    false
                }
                Moment::Submit => count(
                    db,
                    "SELECT count(*) FROM jobs WHERE status = 'uploading' AND lease_until > now()",
                )
                .await
                    > 0,
                Moment::WebhookIntake => {
                    count(
                        db,
                        "SELECT count(*) FROM jobs WHERE status IN ('submitted', 'in_progress')",
                    )
                    .await
                        > 0
                }
                Moment::RelayDelivery => {
                    count(
                        db,
                        "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
                    )
                    .await
                        > 0
                }
            };
        if hit {
            return Some(rand::thread_rng().gen_range(0..REPLICAS));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn count(db: &sqlx::PgPool, query: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(query)
        .fetch_one(db)
        .await
        .unwrap_or(0)
}

struct Kill {
    replica: usize,
    moment: Moment,
}

/// Kills replicas at chosen moments and restarts them, until the driver is done (or, with a
/// fixed number, until that many).
async fn killer(
    replicas: Arc<Mutex<Vec<Replica>>>,
    activity: Arc<Activity>,
    db: sqlx::PgPool,
    http: reqwest::Client,
    kills: Option<usize>,
) -> Result<Vec<Kill>, String> {
    let moments = [
        Moment::Upload,
        Moment::Submit,
        Moment::WebhookIntake,
        Moment::RelayDelivery,
    ];
    let mut done = Vec::new();
    let mut turn = 0usize;
    loop {
        if activity.done.load(Ordering::SeqCst)
            || INTERRUPTED.load(Ordering::SeqCst)
            || kills.is_some_and(|k| done.len() >= k)
        {
            return Ok(done);
        }
        if kills.is_none() {
            let pause = rand::thread_rng().gen_range(800..2500);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let moment = moments[turn % moments.len()];
        turn += 1;
        let Some(replica) = aim(moment, &activity, &db).await else {
            continue;
        };
        let base = {
            let mut replicas = replicas.lock().unwrap();
            replicas[replica].sigkill();
            replicas[replica].base.clone()
        };
        done.push(Kill { replica, moment });
        let down = rand::thread_rng().gen_range(200..1500);
        tokio::time::sleep(Duration::from_millis(down)).await;
        replicas.lock().unwrap()[replica].spawn()?;
        wait_ready(&http, &base, Duration::from_secs(60)).await?;
    }
}

/// The longest time any job or endpoint had been waiting on an expired lease, sampled.
async fn lease_watch(db: sqlx::PgPool, activity: Arc<Activity>) -> (f64, f64) {
    let (mut jobs, mut endpoints) = (0f64, 0f64);
    while !activity.done.load(Ordering::SeqCst) {
        let job_wait: Option<f64> = sqlx::query_scalar(
            "SELECT max(extract(epoch FROM now() - lease_until))::float8 FROM jobs
             WHERE lease_owner IS NOT NULL AND lease_until < now()
               AND (status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')
                    OR custody_needed OR result_fetch_needed)",
        )
        .fetch_one(&db)
        .await
        .unwrap_or(None);
        let endpoint_wait: Option<f64> = sqlx::query_scalar(
            "SELECT max(extract(epoch FROM now() - e.relay_lease_until))::float8
             FROM webhook_endpoints e
             WHERE e.relay_owner IS NOT NULL AND e.relay_lease_until < now()
               AND EXISTS (SELECT 1 FROM webhook_deliveries d
                           WHERE d.endpoint_id = e.id AND d.status = 'pending')",
        )
        .fetch_one(&db)
        .await
        .unwrap_or(None);
        jobs = jobs.max(job_wait.unwrap_or(0.0));
        endpoints = endpoints.max(endpoint_wait.unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (jobs, endpoints)
}

/// Everything the run measured.
struct Report {
    trainings: usize,
    training_statuses: BTreeMap<String, usize>,
    generations: usize,
    generation_statuses: BTreeMap<String, usize>,
    planned_generations: usize,
    interrupted_submits: i64,
    unexplained_failures: i64,
    /// Jobs (trainings and generation items) whose applied terminal transitions are not one.
    jobs: usize,
    jobs_not_terminal_once: usize,
    /// Trainings and generations without exactly one terminal event.
    resources_not_one_terminal_event: usize,
    fal_submits: usize,
    duplicate_submits: usize,
    events: usize,
    /// Per endpoint: (events missing, deliveries repeated with the same id).
    deliveries: Vec<(String, usize, usize)>,
    bad_signatures: u32,
    blobs_referenced: usize,
    blobs_missing: usize,
    longest_job_lease_wait: f64,
    longest_endpoint_lease_wait: f64,
    kills: Vec<Kill>,
    failovers: usize,
    pending_duplicates: usize,
    drains: Vec<Duration>,
}

impl Report {
    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.jobs_not_terminal_once > 0 {
            failures.push(format!(
                "{} jobs without exactly one terminal transition",
                self.jobs_not_terminal_once
            ));
        }
        if self.resources_not_one_terminal_event > 0 {
            failures.push(format!(
                "{} trainings/generations without exactly one terminal event",
                self.resources_not_one_terminal_event
            ));
        }
        if self.unexplained_failures > 0 {
            failures.push(format!(
                "{} jobs did not succeed although their submit was not interrupted",
                self.unexplained_failures
            ));
        }
        if self.generations < self.planned_generations {
            failures.push(format!(
                "{} of {} generations made",
                self.generations, self.planned_generations
            ));
        }
        if self.duplicate_submits > 0 {
            failures.push(format!(
                "{} duplicate paid submissions",
                self.duplicate_submits
            ));
        }
        for (endpoint, missing, _) in &self.deliveries {
            if *missing > 0 {
                failures.push(format!(
                    "{missing} events never delivered to endpoint {endpoint}"
                ));
            }
        }
        if self.bad_signatures > 0 {
            failures.push(format!(
                "{} deliveries with a bad signature",
                self.bad_signatures
            ));
        }
        if self.blobs_missing > 0 {
            failures.push(format!("{} blobs missing", self.blobs_missing));
        }
        let lease = JOB_LEASE_SECS as f64;
        if self.longest_job_lease_wait > lease {
            failures.push(format!(
                "a job waited {:.1} s on an expired lease",
                self.longest_job_lease_wait
            ));
        }
        if self.longest_endpoint_lease_wait > WEBHOOK_LEASE_SECS as f64 {
            failures.push(format!(
                "an endpoint waited {:.1} s on an expired relay lease",
                self.longest_endpoint_lease_wait
            ));
        }
        if self.kills.is_empty() {
            failures.push("no replica was killed".into());
        }
        failures
    }

    fn print(&self, plan: Plan, took: Duration) {
        let mut by_moment: HashMap<Moment, usize> = HashMap::new();
        for kill in &self.kills {
            *by_moment.entry(kill.moment).or_default() += 1;
        }
        let mut per_replica = [0usize; REPLICAS];
        for kill in &self.kills {
            per_replica[kill.replica] += 1;
        }
        let rows: Vec<(String, String)> = vec![
            (
                "replicas (avatars serve)".into(),
                format!("{REPLICAS}, one PostgreSQL, one S3 (moto), one fal-sim"),
            ),
            (
                format!("trainings of {} avatars, all terminal", plan.trainings),
                statuses(self.trainings, &self.training_statuses),
            ),
            (
                "generations, all terminal".into(),
                format!(
                    "{} of {}: {}",
                    self.generations,
                    plan.generations,
                    statuses(self.generations, &self.generation_statuses)
                ),
            ),
            (
                "jobs whose submit a kill interrupted (end timed_out)".into(),
                self.interrupted_submits.to_string(),
            ),
            (
                "jobs not succeeded for another reason".into(),
                self.unexplained_failures.to_string(),
            ),
            (
                "jobs with not exactly one terminal transition".into(),
                format!("{} of {}", self.jobs_not_terminal_once, self.jobs),
            ),
            (
                "resources with not exactly one terminal event".into(),
                self.resources_not_one_terminal_event.to_string(),
            ),
            (
                "duplicate paid submissions (fal-sim log)".into(),
                format!("{} of {} submits", self.duplicate_submits, self.fal_submits),
            ),
            ("outbound events".into(), self.events.to_string()),
        ]
        .into_iter()
        .chain(self.deliveries.iter().map(|(endpoint, missing, repeated)| {
            (
                format!("endpoint {endpoint}: missing / sent again (same webhook-id)"),
                format!("{missing} / {repeated}"),
            )
        }))
        .chain([
            (
                "deliveries with a bad signature".into(),
                self.bad_signatures.to_string(),
            ),
            (
                "blobs missing (photos, LoRA files, images)".into(),
                format!("{} of {}", self.blobs_missing, self.blobs_referenced),
            ),
            (
                "longest wait on an expired job lease".into(),
                format!(
                    "{:.1} s (lease {JOB_LEASE_SECS} s)",
                    self.longest_job_lease_wait
                ),
            ),
            (
                "longest wait on an expired relay lease".into(),
                format!(
                    "{:.1} s (lease {WEBHOOK_LEASE_SECS} s)",
                    self.longest_endpoint_lease_wait
                ),
            ),
            (
                "SIGKILLs (per replica)".into(),
                format!(
                    "{} ({})",
                    self.kills.len(),
                    per_replica.map(|n| n.to_string()).join("/")
                ),
            ),
        ])
        .chain(
            [
                Moment::Upload,
                Moment::Submit,
                Moment::WebhookIntake,
                Moment::RelayDelivery,
            ]
            .into_iter()
            .map(|m| {
                (
                    format!("  killed during {}", m.label()),
                    by_moment.get(&m).copied().unwrap_or(0).to_string(),
                )
            }),
        )
        .chain([
            (
                "requests re-sent to another replica".into(),
                self.failovers.to_string(),
            ),
            (
                "re-uploads refused: same file pending from a killed upload".into(),
                self.pending_duplicates.to_string(),
            ),
            (
                "drain after SIGTERM (per replica)".into(),
                self.drains
                    .iter()
                    .map(|d| format!("{:.2} s", d.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("run time".into(), format!("{:.0} s", took.as_secs_f64())),
        ])
        .collect();
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        println!();
        println!("| {:width$} | result", "check");
        println!("|-{}-|-------", "-".repeat(width));
        for (k, v) in rows {
            println!("| {k:width$} | {v}");
        }
        println!();
    }
}

fn statuses(total: usize, by_status: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

async fn run_cluster(
    work: &Path,
    bins: &Binaries,
    database_url: &str,
    plan: Plan,
) -> Result<Report, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let moto = Moto::start(&work.join("moto.log")).await?;

    // fal-sim prints its URLs and key on stdout.
    let sim_log = std::fs::File::create(work.join("fal-sim.log")).map_err(|e| e.to_string())?;
    let mut sim = Process(
        Command::new(&bins.fal_sim)
            .args([
                "--bind",
                "127.0.0.1:0",
                "--time-factor",
                "0.005",
                "--concurrency",
                "16",
            ])
            .stdout(Stdio::piped())
            .stderr(sim_log)
            .spawn()
            .map_err(|e| format!("starting fal-sim: {e}"))?,
    );
    let mut sim_env = HashMap::new();
    let mut lines = BufReader::new(sim.0.stdout.take().ok_or("fal-sim stdout")?).lines();
    while sim_env.len() < 6 {
        let line = lines
            .next()
            .ok_or("fal-sim exited before printing its URLs")?
            .map_err(|e| e.to_string())?;
        if let Some((k, v)) = line.split_once('=') {
            sim_env.insert(k.to_string(), v.to_string());
        }
    }
    let control = sim_env["FAL_SIM_CONTROL_URL"].clone();
    let sim_addr = sim_env["FAL_QUEUE_URL"]
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();

    // The receiver of outbound webhooks.
    let received: Receiver = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let receiver_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new()
        .route("/hooks/{endpoint}", axum::routing::post(receive))
        .with_state(Arc::clone(&received));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let avatars = |args: &[&str]| {
        let output = Command::new(&bins.avatars)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(format!(
                "avatars {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    avatars(&["migrate"])?;
    let key = avatars(&["api-keys", "create", "--tenant", "cluster"])?;

    let prefix = format!("cluster-{}", std::process::id());
    // One key ring for every replica: each opens the signing secrets the others sealed and
    // verifies the callback tokens the others gave fal.
    let (_, ring) = service::secrets::KeyRing::generate("cluster");
    let mut replicas = Vec::new();
    for index in 0..REPLICAS {
        let port = crate::bench_photos::free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL", database_url.to_string()),
            ("DATABASE_MAX_CONNECTIONS", "10".into()),
            ("BIND_ADDR", format!("127.0.0.1:{port}")),
            ("PUBLIC_BASE_URL", base.clone()),
            ("FAL_KEY", sim_env["FAL_KEY"].clone()),
            (
                "SECRETS_KEYS",
                secrecy::ExposeSecret::expose_secret(&ring).to_string(),
            ),
            ("FAL_QUEUE_URL", sim_env["FAL_QUEUE_URL"].clone()),
            ("FAL_REST_URL", sim_env["FAL_REST_URL"].clone()),
            ("FAL_CDN_URL", sim_env["FAL_CDN_URL"].clone()),
            ("FAL_JWKS_URL", sim_env["FAL_JWKS_URL"].clone()),
            ("FAL_STATUS_CHECK_INTERVAL", "2".into()),
            ("FAL_TRAINER_BY_KIND", "style=fast_lora".into()),
            ("JOB_LEASE", JOB_LEASE_SECS.to_string()),
            // A job whose submit was interrupted before fal got it ends timed out: soon here.
            ("GENERATION_TIMEOUT", "60".into()),
            ("FAL_TRAINING_TIMEOUT", "120".into()),
            ("SHUTDOWN_DELAY", "0".into()),
            ("SHUTDOWN_WORKER_GRACE", "10".into()),
            ("AVATAR_MIN_PHOTOS", PHOTOS.to_string()),
            ("API_KEY_RATE_PER_SECOND", "100000".into()),
            ("API_KEY_RATE_BURST", "100000".into()),
            ("TENANT_MAX_ACTIVE_TRAININGS", "1000".into()),
            ("TENANT_MAX_ACTIVE_GENERATIONS", "1000".into()),
            ("WEBHOOK_TIMEOUT", "3".into()),
            ("WEBHOOK_LEASE", WEBHOOK_LEASE_SECS.to_string()),
            ("WEBHOOK_RETRY_SCALE", "0.01".into()),
            // The webhook receiver listens on loopback.
            ("WEBHOOK_ALLOW_LOOPBACK", "true".into()),
            // fal-sim's files are fetched from loopback: allowed by exact address.
            ("FETCH_ALLOW_HTTP", "true".into()),
            (
                "FETCH_ALLOWED_PRIVATE",
                format!("{receiver_addr},{sim_addr}"),
            ),
            ("RUST_LOG", "warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(moto.service_env(&prefix));
        let mut replica = Replica {
            base,
            env,
            log: work.join(format!("replica-{index}.log")),
            binary: bins.avatars.clone(),
            process: None,
        };
        replica.spawn()?;
        replicas.push(replica);
    }
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    for base in &bases {
        wait_ready(&http, base, Duration::from_secs(60)).await?;
    }
    let replicas = Arc::new(Mutex::new(replicas));
    eprintln!(
        "cluster: {REPLICAS} replicas ready; driving {} trainings and {} generations",
        plan.trainings, plan.generations
    );

    let activity = Arc::new(Activity::default());
    let ctx = Arc::new(Ctx {
        http: http.clone(),
        bases: bases.clone(),
        key,
        next: AtomicUsize::new(0),
        activity: Arc::clone(&activity),
        failovers: AtomicUsize::new(0),
        pending_duplicates: AtomicUsize::new(0),
        deadline: Instant::now() + plan.deadline,
    });

    for name in ENDPOINTS {
        let endpoint = ctx
            .call(
                reqwest::Method::POST,
                "/webhook-endpoints",
                Some(&json!({"url": format!("http://{receiver_addr}/hooks/{name}")})),
            )
            .await?;
        let secret = endpoint["secret"]
            .as_str()
            .and_then(|s| s.strip_prefix("whsec_"))
            .ok_or("no whsec_ secret")?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret)
            .map_err(|e| e.to_string())?;
        received
            .lock()
            .unwrap()
            .secrets
            .insert(name.to_string(), secret);
    }

    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await
        .map_err(|e| e.to_string())?;
    let watch = tokio::spawn(lease_watch(db.clone(), Arc::clone(&activity)));
    let kill_task = tokio::spawn(killer(
        Arc::clone(&replicas),
        Arc::clone(&activity),
        db.clone(),
        http.clone(),
        plan.kills,
    ));

    // Drive: every avatar's flow, `concurrency` at a time.
    let semaphore = Arc::new(tokio::sync::Semaphore::new(plan.concurrency));
    let mut flows = tokio::task::JoinSet::new();
    for n in 0..plan.trainings {
        let shares: Vec<usize> = (0..plan.generations)
            .filter(|g| g % plan.trainings == n)
            .collect();
        let ctx = Arc::clone(&ctx);
        let semaphore = Arc::clone(&semaphore);
        flows.spawn(async move {
            let _permit = semaphore.acquire_owned().await.map_err(|e| e.to_string())?;
            avatar_flow(ctx, n, shares).await
        });
    }
    let mut training_ids = Vec::new();
    let mut generation_ids = Vec::new();
    let mut first_error = None;
    while let Some(joined) = flows.join_next().await {
        match joined.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((trainings, generations)) => {
                training_ids.extend(trainings);
                generation_ids.extend(generations);
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    // Every event written by now must reach both endpoints.
    let events_done = async {
        loop {
            ctx.check_deadline()?;
            let pending = count(
                &db,
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
            )
            .await;
            let unsequenced = count(
                &db,
                "SELECT count(*) FROM outbox_events WHERE position IS NULL",
            )
            .await;
            if pending == 0 && unsequenced == 0 {
                return Ok::<(), String>(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let settled = if first_error.is_none() {
        events_done.await
    } else {
        Ok(())
    };
    activity.done.store(true, Ordering::SeqCst);
    let kills = kill_task.await.map_err(|e| e.to_string())??;
    let (longest_job_lease_wait, longest_endpoint_lease_wait) =
        watch.await.map_err(|e| e.to_string())?;
    if let Some(error) = first_error {
        return Err(error);
    }
    settled?;

    // Terminal exactly once, as the API, the database and the events tell it.
    let mut training_statuses = BTreeMap::new();
    for id in &training_ids {
        let training = ctx
            .call(reqwest::Method::GET, &format!("/trainings/{id}"), None)
            .await?;
        *training_statuses
            .entry(training["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let mut generation_statuses = BTreeMap::new();
    for id in &generation_ids {
        let generation = ctx
            .call(reqwest::Method::GET, &format!("/generations/{id}"), None)
            .await?;
        *generation_statuses
            .entry(generation["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    // A job whose submit a kill interrupted cannot know whether fal has it: it waits for fal's
    // callback until its deadline rather than pay twice. Any other job must succeed.
    let (interrupted_submits, unexplained_failures): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE interrupted),
                count(*) FILTER (WHERE NOT interrupted AND status <> 'succeeded')
         FROM (SELECT j.status, EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = j.id
                   AND e.applied AND e.event = 'submit_outcome_unknown') AS interrupted
               FROM jobs j) jobs",
    )
    .fetch_one(&db)
    .await
    .map_err(|e| e.to_string())?;
    let terminal_transitions: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT j.id, count(e.id) FROM jobs j
         LEFT JOIN job_events e ON e.job_id = j.id AND e.applied
              AND e.to_status IN ('succeeded', 'failed', 'cancelled', 'timed_out')
              AND e.from_status IS DISTINCT FROM e.to_status
         GROUP BY j.id",
    )
    .fetch_all(&db)
    .await
    .map_err(|e| e.to_string())?;
    let jobs_not_terminal_once = terminal_transitions.iter().filter(|(_, n)| *n != 1).count();

    let (deliveries, bad_signatures, resources_not_one_terminal_event, events) = {
        let event_ids: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM outbox_events WHERE position IS NOT NULL")
                .fetch_all(&db)
                .await
                .map_err(|e| e.to_string())?;
        let expected: HashSet<String> = event_ids.iter().map(|id| id.to_string()).collect();
        let received = received.lock().unwrap();
        let deliveries = ENDPOINTS
            .iter()
            .map(|name| {
                let got = received.deliveries.get(*name).cloned().unwrap_or_default();
                let missing = expected.iter().filter(|id| !got.contains_key(*id)).count();
                let repeated: u32 = got.values().map(|n| n - 1).sum();
                (name.to_string(), missing, repeated as usize)
            })
            .collect::<Vec<_>>();
        let mut terminal_events: HashMap<String, usize> = HashMap::new();
        for body in received.bodies.values() {
            let kind = body["type"].as_str().unwrap_or_default();
            let terminal = kind.starts_with("training.")
                && TRAINING_TERMINAL.iter().any(|s| kind.ends_with(s))
                || kind == "generation.succeeded"
                || kind == "generation.failed";
            if terminal {
                if let Some(id) = body["data"]["id"].as_str() {
                    *terminal_events.entry(id.to_string()).or_default() += 1;
                }
            }
        }
        let not_one = training_ids
            .iter()
            .chain(&generation_ids)
            .filter(|id| terminal_events.get(*id).copied().unwrap_or(0) != 1)
            .count();
        (deliveries, received.bad_signatures, not_one, expected.len())
    };

    // fal-sim's request log: one submit per job, named in its webhook URL.
    let requests: Value = http
        .get(format!("{control}/requests"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let requests = requests.as_array().cloned().unwrap_or_default();
    let mut submits_per_job: HashMap<String, usize> = HashMap::new();
    for request in &requests {
        let job = request["webhook_url"]
            .as_str()
            .and_then(|url| url::Url::parse(url).ok())
            .and_then(|url| {
                url.query_pairs()
                    .find(|(k, _)| k == "job")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_else(|| format!("no job: {}", request["request_id"]));
        *submits_per_job.entry(job).or_default() += 1;
    }
    let duplicate_submits = submits_per_job.values().map(|n| n - 1).sum();

    // Every blob the database references is in the bucket.
    let referenced: Vec<String> = sqlx::query_scalar(
        "SELECT blob_key FROM photos WHERE state = 'stored'
         UNION ALL SELECT artifact_key FROM models WHERE artifact_key IS NOT NULL
         UNION ALL SELECT config_key FROM models WHERE config_key IS NOT NULL
         UNION ALL SELECT blob_key FROM generation_images",
    )
    .fetch_all(&db)
    .await
    .map_err(|e| format!("listing referenced blobs: {e}"))?;
    let s3 = store::BlobStore::from_url(
        &format!("s3://{}", crate::moto::BUCKET),
        &store::S3Options {
            endpoint: Some(moto.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some(moto.access_key_id.clone()),
            secret_access_key: Some(moto.secret_access_key.clone().into()),
            session_token: None,
            virtual_hosted_style: false,
            allow_http: true,
        },
    )
    .map_err(|e| e.to_string())?;
    let present: HashSet<String> = s3
        .keys()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let blobs_missing = referenced
        .iter()
        .filter(|k| !present.contains(&format!("{prefix}/{k}")))
        .count();

    // Rolling stop: each replica's drain after SIGTERM.
    let drains = {
        let mut replicas = replicas.lock().unwrap();
        replicas.iter_mut().filter_map(Replica::drain).collect()
    };
    drop(sim);
    drop(moto);

    Ok(Report {
        trainings: training_ids.len(),
        training_statuses,
        generations: generation_ids.len(),
        generation_statuses,
        planned_generations: plan.generations,
        interrupted_submits,
        unexplained_failures,
        jobs: terminal_transitions.len(),
        jobs_not_terminal_once,
        resources_not_one_terminal_event,
        fal_submits: requests.len(),
        duplicate_submits,
        events,
        deliveries,
        bad_signatures,
        blobs_referenced: referenced.len(),
        blobs_missing,
        longest_job_lease_wait,
        longest_endpoint_lease_wait,
        kills,
        failovers: ctx.failovers.load(Ordering::Relaxed),
        pending_duplicates: ctx.pending_duplicates.load(Ordering::Relaxed),
        drains,
    })
}
