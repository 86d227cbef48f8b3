//! Shared set-up: a fast simulator, a client pointed at it, a webhook receiver, archives.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use fal::{FalClient, FalConfig, RetryPolicies};
use fal_sim::{FalSim, SimConfig};
use secrecy::SecretString;
use url::Url;

/// How long a test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Env {
    pub sim: FalSim,
    pub client: FalClient,
}

pub async fn start() -> Env {
    start_with(SimConfig::fast()).await
}

pub async fn start_with(config: SimConfig) -> Env {
    let sim = FalSim::start(config).await.expect("simulator starts");
    let key = sim.default_key().expect("default key").to_owned();
    let client = client_for(&sim, &key, |_| {});
    Env { sim, client }
}

/// A client for `sim` with `key`, short retry delays, and `adjust` applied last.
pub fn client_for(sim: &FalSim, key: &str, adjust: impl FnOnce(&mut FalConfig)) -> FalClient {
    let mut config = FalConfig::new(SecretString::from(key.to_owned())).with_base_urls(
        sim.queue_url(),
        sim.rest_url(),
        sim.cdn_url(),
    );
    config.retry = RetryPolicies::with_delays(Duration::from_millis(1), Duration::from_millis(50));
    config.request_timeout = Duration::from_secs(10);
    adjust(&mut config);
    FalClient::new(config).expect("client builds")
}

/// Bytes that start like a PNG file (the simulator judges images by their magic bytes).
pub fn png_bytes(seed: u8) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(std::iter::repeat_n(seed, 64));
    bytes
}

/// A ZIP holding `images` images with captions, plus an OS metadata file.
pub fn training_zip(images: usize) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut cursor);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for i in 0..images {
            zip.start_file(format!("photo_{i}.png"), options).unwrap();
            zip.write_all(&png_bytes(i as u8)).unwrap();
            zip.start_file(format!("photo_{i}.txt"), options).unwrap();
            zip.write_all(b"a photo of [trigger]").unwrap();
        }
        zip.start_file("__MACOSX/._photo_0.png", options).unwrap();
        zip.write_all(b"meta").unwrap();
        zip.finish().unwrap();
    }
    cursor.into_inner()
}

/// A file in the temp directory, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn with_bytes(name: &str, bytes: &[u8]) -> Self {
        let dir = std::env::temp_dir().join(format!("fal-conformance-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn rand_suffix() -> String {
    use rand::Rng;
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// Uploads a training ZIP and returns its URL.
pub async fn upload_training_zip(client: &FalClient, images: usize) -> Url {
    let file = TempFile::with_bytes("training.zip", &training_zip(images));
    client
        .upload_file(&file.0, "application/zip", None)
        .await
        .expect("upload")
        .file_url
}

/// One delivery as the receiver saw it: headers and the raw body bytes.
#[derive(Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A webhook receiver on loopback answering with scripted statuses (then 200).
pub struct Receiver {
    pub url: Url,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Receiver {
    pub async fn start(script: Vec<StatusCode>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let recorded = deliveries.clone();
        let app = axum::Router::new().route(
            "/webhooks/fal",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let recorded = recorded.clone();
                let script = script.clone();
                async move {
                    recorded.lock().unwrap().push(Delivery { headers, body });
                    let status = script.lock().unwrap().pop_front().unwrap_or(StatusCode::OK);
                    if status.is_redirection() {
                        return (status, [("location", "https://example.invalid/elsewhere")])
                            .into_response();
                    }
                    (status, [("x-receiver", "test")]).into_response()
                }
            }),
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            url: Url::parse(&format!("http://{addr}/webhooks/fal?job=42&token=t%20k")).unwrap(),
            deliveries,
            shutdown,
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `status` until COMPLETED (the client's own polling path), within [`DEADLINE`].
pub async fn poll_until_completed(
    client: &FalClient,
    request: &fal::RequestRef,
) -> fal::QueueStatus {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = client.status(request, true).await.expect("status");
        if status.is_completed() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "request did not complete in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Requests the simulator received on `path` with `method`.
pub fn received(sim: &FalSim, method: &str, path: &str) -> Vec<fal_sim::ReceivedRequest> {
    sim.received_requests()
        .into_iter()
        .filter(|r| r.method == method && r.path == path)
        .collect()
}
