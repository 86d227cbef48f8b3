//! Running requests: admission into a per-endpoint queue, a concurrency limit, progress with
//! logs, real outputs on the CDN, completion and the webhook that follows.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use serde_json::{json, Value};

use crate::accounts::Account;
use crate::archive;
use crate::models::{self, EndpointSpec, Work};
use crate::record::QueueState;
use crate::state::{LogLine, Outcome, RequestRecord, SharedSim, Sim, StoredFile};
use crate::{artifacts, webhook};

/// Progress log lines per request at most.
const MAX_PROGRESS_LINES: u64 = 10;

/// Everything a submit carries into the queue.
pub(crate) struct Admission {
    pub account: Account,
    pub spec: &'static EndpointSpec,
    pub input: Value,
    pub webhook_url: Option<String>,
    pub low_priority: bool,
    pub start_deadline: Option<Duration>,
    pub max_queue_length: Option<usize>,
    /// From `X-Fal-Object-Lifecycle-Preference`: outputs expire this long after completion.
    pub output_expiry: Option<Duration>,
}

/// Enqueues a request. `None` when `fal_max_queue_length` is exceeded.
pub(crate) fn admit(sim: &SharedSim, admission: Admission) -> Option<(String, u64)> {
    let id = uuid::Uuid::new_v4().to_string();
    let endpoint = admission.spec.id.to_owned();
    let position = {
        let mut inner = sim.lock();
        let waiting_now = inner.waiting.get(&endpoint).map_or(0, |q| q.len());
        if admission
            .max_queue_length
            .is_some_and(|max| waiting_now >= max)
        {
            return None;
        }
        let faults = match inner
            .request_faults
            .iter()
            .position(|(filter, _)| filter.as_deref().is_none_or(|e| e == endpoint))
        {
            Some(index) => inner
                .request_faults
                .remove(index)
                .map(|(_, f)| f)
                .unwrap_or_default(),
            None => Default::default(),
        };
        let record = RequestRecord {
            id: id.clone(),
            endpoint: endpoint.clone(),
            app_path: models::app_path(&endpoint).unwrap_or_else(|| endpoint.clone()),
            user_id: admission.account.user_id.clone(),
            input: admission.input,
            webhook: Sim::new_webhook_report(admission.webhook_url.is_some()),
            webhook_url: admission.webhook_url,
            state: QueueState::InQueue,
            logs: Vec::new(),
            outcome: None,
            cancel_requested: false,
            faults,
            low_priority: admission.low_priority,
            output_expiry: admission.output_expiry,
        };
        let flags: Vec<bool> = inner.waiting.get(&endpoint).map_or_else(Vec::new, |queue| {
            queue
                .iter()
                .map(|w| inner.requests.get(w).is_some_and(|r| r.low_priority))
                .collect()
        });
        inner.requests.insert(id.clone(), record);
        // Low priority requests wait behind every normal one.
        let index = if admission.low_priority {
            flags.len()
        } else {
            flags.iter().position(|low| *low).unwrap_or(flags.len())
        };
        inner
            .waiting
            .entry(endpoint.clone())
            .or_default()
            .insert(index, id.clone());
        index as u64
    };
    if let Some(deadline) = admission.start_deadline {
        let sim = sim.clone();
        let id = id.clone();
        let wait = sim.config.scaled(deadline);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            expire_if_not_started(&sim, &id);
        });
    }
    sim.notify();
    schedule(sim);
    Some((id, position))
}

/// Starts waiting requests while their endpoint has free capacity. Stalled requests keep their
/// place and are skipped.
pub(crate) fn schedule(sim: &SharedSim) {
    let mut to_start = Vec::new();
    {
        let mut inner = sim.lock();
        let inner = &mut *inner;
        for (endpoint, queue) in inner.waiting.iter_mut() {
            let running = inner.running.entry(endpoint.clone()).or_default();
            let mut index = 0;
            while *running < sim.config.concurrency_per_endpoint && index < queue.len() {
                let id = &queue[index];
                let stalled = inner.requests.get(id).is_none_or(|r| r.faults.stall);
                if stalled {
                    index += 1;
                    continue;
                }
                let id = queue.remove(index).expect("index checked");
                if let Some(record) = inner.requests.get_mut(&id) {
                    record.state = QueueState::InProgress;
                    *running += 1;
                    to_start.push((id, record.endpoint.clone()));
                }
            }
        }
    }
    for (id, endpoint) in to_start {
        let sim = sim.clone();
        tokio::spawn(async move {
            let Some(spec) = models::find(&endpoint) else {
                return;
            };
            let outcome = run(&sim, &id, spec).await;
            if let Some(outcome) = outcome {
                complete(&sim, &id, outcome);
            }
        });
    }
    sim.notify();
}

/// Fails a request whose `X-Fal-Request-Timeout` passed before it started (504, user).
fn expire_if_not_started(sim: &SharedSim, id: &str) {
    let expired = {
        let mut inner = sim.lock();
        let queued = inner
            .requests
            .get(id)
            .is_some_and(|r| r.state == QueueState::InQueue);
        if queued {
            for queue in inner.waiting.values_mut() {
                queue.retain(|w| w != id);
            }
        }
        queued
    };
    if expired {
        complete_failed(
            sim,
            id,
            Outcome::Failure {
                http_status: 504,
                body: json!({"detail": "Request timed out", "error_type": "request_timeout"}),
                error: "Request timed out".into(),
                error_type: "request_timeout".into(),
                user_timeout: true,
            },
            false,
        );
    }
}

pub(crate) enum CancelResult {
    Requested,
    AlreadyCompleted,
    NotFound,
}

/// A queued request is removed and completes as cancelled; a running one is signalled.
pub(crate) fn cancel(sim: &SharedSim, id: &str) -> CancelResult {
    let state = {
        let mut inner = sim.lock();
        let Some(record) = inner.requests.get_mut(id) else {
            return CancelResult::NotFound;
        };
        let state = record.state;
        if state != QueueState::Completed {
            record.cancel_requested = true;
        }
        if state == QueueState::InQueue {
            for queue in inner.waiting.values_mut() {
                queue.retain(|w| w != id);
            }
        }
        state
    };
    match state {
        QueueState::Completed => CancelResult::AlreadyCompleted,
        QueueState::InQueue => {
            complete_failed(sim, id, cancelled_outcome(), true);
            CancelResult::Requested
        }
        QueueState::InProgress => {
            sim.notify();
            CancelResult::Requested
        }
    }
}

/// How a cancelled request completes: `client_cancelled` (499), inferred from fal's
/// request-errors table.
fn cancelled_outcome() -> Outcome {
    Outcome::Failure {
        http_status: 499,
        body: json!({"detail": "Request cancelled by client", "error_type": "client_cancelled"}),
        error: "Request cancelled by client".into(),
        error_type: "client_cancelled".into(),
        user_timeout: false,
    }
}

/// Lets a stalled request run.
pub(crate) fn release(sim: &SharedSim, id: &str) -> bool {
    let found = {
        let mut inner = sim.lock();
        match inner.requests.get_mut(id) {
            Some(record) => {
                record.faults.stall = false;
                true
            }
            None => false,
        }
    };
    if found {
        schedule(sim);
    }
    found
}

/// Completes a request that never ran (no running slot to free).
fn complete_failed(sim: &SharedSim, id: &str, outcome: Outcome, cancelled: bool) {
    finish(sim, id, outcome, false, cancelled);
}

/// Completes a running request and frees its slot.
fn complete(sim: &SharedSim, id: &str, outcome: Outcome) {
    let cancelled =
        matches!(&outcome, Outcome::Failure { error_type, .. } if error_type == "client_cancelled");
    finish(sim, id, outcome, true, cancelled);
}

fn finish(sim: &SharedSim, id: &str, outcome: Outcome, was_running: bool, cancelled: bool) {
    let send_webhook = {
        let mut inner = sim.lock();
        let Some(record) = inner.requests.get_mut(id) else {
            return;
        };
        if record.state == QueueState::Completed {
            return;
        }
        record.state = QueueState::Completed;
        record.outcome = Some(outcome);
        record.logs.push(LogLine {
            message: "Request completed".into(),
            level: "INFO",
            timestamp: crate::state::now_timestamp(),
        });
        let endpoint = record.endpoint.clone();
        let send = record.webhook_url.is_some() && (!cancelled || sim.config.webhook_on_cancel);
        if !send && record.webhook_url.is_some() {
            record.webhook.outcome = crate::record::WebhookOutcome::None;
        }
        if was_running {
            if let Some(running) = inner.running.get_mut(&endpoint) {
                *running = running.saturating_sub(1);
            }
        }
        send
    };
    if send_webhook {
        let sim = sim.clone();
        let id = id.to_owned();
        tokio::spawn(async move { webhook::deliver(sim, id).await });
    }
    schedule(sim);
}

fn validation_failure(issues: Vec<Value>) -> Outcome {
    let first = issues.first().cloned().unwrap_or(Value::Null);
    Outcome::Failure {
        http_status: 422,
        error: first["msg"]
            .as_str()
            .unwrap_or("Unprocessable Entity")
            .to_owned(),
        error_type: first["type"].as_str().unwrap_or("value_error").to_owned(),
        body: json!({ "detail": issues }),
        user_timeout: false,
    }
}

/// Runs one request; `None` when it already completed (cancelled).
async fn run(sim: &SharedSim, id: &str, spec: &'static EndpointSpec) -> Option<Outcome> {
    let (input, fail) = {
        let inner = sim.lock();
        let record = inner.requests.get(id)?;
        (record.input.clone(), record.faults.fail.clone())
    };
    sim.log_line(id, format!("Starting {}", spec.id));
    if let Some(fail) = fail {
        let body = fail
            .body
            .clone()
            .unwrap_or_else(|| json!({"detail": fail.error, "error_type": fail.error_type}));
        return Some(Outcome::Failure {
            http_status: fail.status,
            body,
            error: fail.error,
            error_type: fail.error_type,
            user_timeout: false,
        });
    }
    if let Err(issues) = spec.validate(&input) {
        return Some(validation_failure(issues));
    }
    let archive_field = match spec.work {
        Work::LoraTraining { archive_field, .. } => Some(archive_field),
        Work::ProTraining => Some("data_url"),
        _ => None,
    };
    if let Some(field) = archive_field {
        let url = input[field].as_str().unwrap_or_default().to_owned();
        sim.log_line(id, format!("Downloading training data from {url}"));
        if let Err(rejection) = check_archive(sim, &url).await {
            return Some(validation_failure(vec![models::issue(
                field,
                &rejection.msg,
                rejection.kind,
            )]));
        }
    }
    if spec.work == Work::LoraGeneration {
        // Runners download each LoRA given by URL; one that cannot be fetched (e.g. expired on
        // the CDN) fails the request. Other paths (Hugging Face ids) are taken as given.
        let paths: Vec<String> = input["loras"]
            .as_array()
            .map(|loras| {
                loras
                    .iter()
                    .map(|l| l["path"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        for (index, path) in paths.iter().enumerate() {
            if !(path.starts_with("http://") || path.starts_with("https://")) {
                continue;
            }
            sim.log_line(id, format!("Downloading LoRA from {path}"));
            if let Err(message) = fetch_lora(sim, path).await {
                return Some(validation_failure(vec![json!({
                    "loc": ["body", "loras", index, "path"],
                    "msg": message,
                    "type": "file_download_error",
                })]));
            }
        }
    }
    if spec.work == Work::UltraGeneration {
        let finetune_id = input["finetune_id"].as_str().unwrap_or_default();
        let known = sim.lock().finetunes.iter().any(|f| f == finetune_id);
        if !known {
            // fal's exact answer for an unknown finetune is [UNVERIFIED].
            return Some(validation_failure(vec![models::issue(
                "finetune_id",
                "Finetune not found",
                "value_error",
            )]));
        }
    }

    let (units, per_unit) = spec.work_units(&input);
    let units = units.max(1);
    let ticks = units.min(MAX_PROGRESS_LINES);
    let real_total = per_unit.mul_f64(units as f64);
    let tick_wait = sim.config.scaled(real_total) / ticks as u32;
    for tick in 1..=ticks {
        tokio::time::sleep(tick_wait).await;
        let cancelled = sim
            .lock()
            .requests
            .get(id)
            .is_some_and(|r| r.cancel_requested);
        if cancelled && sim.config.honour_cancel_in_progress {
            return Some(cancelled_outcome());
        }
        let step = units * tick / ticks;
        sim.log_line(id, format!("step {step}/{units}"));
    }
    let output = produce_output(sim, id, spec, &input).await;
    Some(Outcome::Success {
        billable_units: spec.billable_units(&input, &output),
        output,
        inference_time: real_total.as_secs_f64(),
    })
}

/// Why a runner could not download a file.
enum DownloadError {
    InvalidUrl,
    /// The simulator has no internet: only its own CDN and loopback servers are reachable.
    Unreachable,
    /// Sending, or reading the body.
    Transport(reqwest::Error),
    Status(u16),
}

impl DownloadError {
    /// fal's message for it; `detailed` names the transport error instead of the URL.
    fn message(self, url: &str, detailed: bool) -> String {
        match self {
            DownloadError::InvalidUrl => format!("Invalid URL: {url}"),
            DownloadError::Transport(e) if detailed => {
                format!("Failed to download the file: {}", e.without_url())
            }
            DownloadError::Unreachable | DownloadError::Transport(_) => {
                format!("Failed to download the file from {url}")
            }
            DownloadError::Status(status) => format!("Failed to download the file: HTTP {status}"),
        }
    }
}

/// Downloads a file like a runner would (no auth; own CDN or loopback only).
async fn download(sim: &SharedSim, url: &str) -> Result<Bytes, DownloadError> {
    let parsed = url::Url::parse(url).map_err(|_| DownloadError::InvalidUrl)?;
    let reachable = matches!(parsed.scheme(), "http" | "https")
        && match parsed.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
    if !reachable {
        return Err(DownloadError::Unreachable);
    }
    let response = sim
        .http
        .get(parsed)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .map_err(DownloadError::Transport)?;
    if !response.status().is_success() {
        return Err(DownloadError::Status(response.status().as_u16()));
    }
    response.bytes().await.map_err(DownloadError::Transport)
}

/// Downloads a LoRA like a runner would.
async fn fetch_lora(sim: &SharedSim, url: &str) -> Result<(), String> {
    download(sim, url)
        .await
        .map(|_| ())
        .map_err(|e| e.message(url, false))
}

/// Downloads a training archive like a runner would and checks it holds images.
async fn check_archive(sim: &SharedSim, url: &str) -> Result<(), archive::Rejection> {
    let download_error = |msg: String| archive::Rejection {
        msg,
        kind: "file_download_error",
    };
    let bytes = download(sim, url)
        .await
        .map_err(|e| download_error(e.message(url, true)))?;
    let images = tokio::task::spawn_blocking(move || archive::count_images(&bytes))
        .await
        .map_err(|e| download_error(e.to_string()))??;
    if images < sim.config.min_training_images {
        return Err(archive::Rejection {
            msg: format!(
                "The archive holds {images} images; at least {} are required",
                sim.config.min_training_images
            ),
            kind: "not_enough_images",
        });
    }
    Ok(())
}

/// Stores an output of request `id` on the CDN and returns its public URL.
pub(crate) fn store_file(
    sim: &Sim,
    id: &str,
    name: &str,
    content_type: &str,
    bytes: Bytes,
) -> String {
    let token: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(10)
        .map(char::from)
        .collect();
    let path = format!("sim/{token}_{name}");
    let mut inner = sim.lock();
    let expires_at = inner
        .requests
        .get(id)
        .and_then(|r| r.output_expiry)
        .map(|after| Instant::now() + after);
    inner.files.insert(
        path.clone(),
        StoredFile {
            bytes,
            content_type: content_type.to_owned(),
            expires_at,
        },
    );
    format!("{}/files/{}", sim.urls.cdn, path)
}

async fn produce_output(sim: &SharedSim, id: &str, spec: &EndpointSpec, input: &Value) -> Value {
    match spec.work {
        Work::LoraTraining { .. } => {
            let trigger = input
                .get("trigger_phrase")
                .or_else(|| input.get("trigger_word"))
                .and_then(Value::as_str);
            let lora = Bytes::from(artifacts::safetensors_lora(id, trigger));
            let lora_size = lora.len();
            let lora_url = store_file(
                sim,
                id,
                "pytorch_lora_weights.safetensors",
                "application/octet-stream",
                lora,
            );
            let config = Bytes::from(serde_json::to_vec_pretty(input).unwrap_or_default());
            let config_size = config.len();
            let config_url = store_file(sim, id, "config.json", "application/json", config);
            json!({
                "diffusers_lora_file": {"url": lora_url, "content_type": "application/octet-stream", "file_name": "pytorch_lora_weights.safetensors", "file_size": lora_size},
                "config_file": {"url": config_url, "content_type": "application/json", "file_name": "config.json", "file_size": config_size},
            })
        }
        Work::ProTraining => {
            let finetune_id = uuid::Uuid::new_v4().to_string();
            sim.lock().finetunes.push(finetune_id.clone());
            json!({ "finetune_id": finetune_id })
        }
        Work::LoraGeneration | Work::UltraGeneration => {
            let (width, height) = if spec.work == Work::LoraGeneration {
                models::lora_image_size(input)
            } else {
                let (w, h) = models::ultra_image_size(input);
                let divisor = sim.config.ultra_size_divisor.max(1);
                ((w / divisor).max(1), (h / divisor).max(1))
            };
            let count = input.get("num_images").and_then(Value::as_u64).unwrap_or(1);
            let seed = input
                .get("seed")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| rand::thread_rng().gen());
            let png = input.get("output_format").and_then(Value::as_str) == Some("png");
            let mut images = Vec::new();
            for index in 0..count {
                let image_seed = seed.wrapping_add(index);
                let bytes = tokio::task::spawn_blocking(move || {
                    if png {
                        artifacts::png(width, height, image_seed)
                    } else {
                        artifacts::jpeg(width, height, image_seed)
                    }
                })
                .await
                .unwrap_or_default();
                let (content_type, name) = if png {
                    ("image/png", "image.png")
                } else {
                    ("image/jpeg", "image.jpg")
                };
                let size = bytes.len();
                let url = store_file(sim, id, name, content_type, Bytes::from(bytes));
                images.push(json!({"url": url, "width": width, "height": height, "content_type": content_type, "file_name": name, "file_size": size}));
            }
            json!({
                "images": images,
                "timings": {"inference": 2.5},
                "seed": seed,
                "has_nsfw_concepts": vec![false; count as usize],
                "prompt": input.get("prompt").cloned().unwrap_or(Value::Null),
            })
        }
    }
}
