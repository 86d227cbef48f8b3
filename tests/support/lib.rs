//! Test harness: the real router served over real HTTP on a loopback port, backed by the test's
//! own PostgreSQL database.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use api::application::{Application, Resources};
use api::Settings;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod browser;
pub mod images;
pub mod otlp;
pub mod receiver;
pub mod s3;
pub mod scrape;
pub mod standard_webhooks;

/// How long a test waits for the service to reach a state before it fails.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(60);

/// A running instance of the service. Stops when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base_url: String,
    pub store: store::Store,
    pub blobs: store::BlobStore,
    /// Where blobs live on disk, and where uploads are spooled; removed with the app.
    pub blobs_dir: tempfile::TempDir,
    pub scratch_dir: tempfile::TempDir,
    pub client: reqwest::Client,
    /// A key of the tenant `tenant-a`.
    pub key: String,
    /// The fal simulator this app talks to, when started with one.
    pub sim: Option<Arc<fal_sim::FalSim>>,
    settings: Settings,
    /// The running application layer, for waiting on what it announces.
    running: Option<service::Service>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// How an app with fal is set up.
pub struct FalOptions {
    pub sim: fal_sim::SimConfig,
    /// Spaces safety-net lookups and progress lookups for watched jobs. Long by default, so
    /// a test's own `GET`s of a training (which watch it) cause no lookups unless it wants them.
    pub status_check_interval: Duration,
    pub training_timeout: Duration,
    /// The fal key the service uses; the simulator's default key when `None`.
    pub key: Option<String>,
    /// The blob store; a fresh local directory when `None`.
    pub blobs: Option<store::BlobStore>,
}

impl Default for FalOptions {
    fn default() -> Self {
        Self {
            sim: fal_sim::SimConfig::fast(),
            status_check_interval: Duration::from_secs(3600),
            training_timeout: Duration::from_secs(1800),
            key: None,
            blobs: None,
        }
    }
}

fn fal_link(sim: &fal_sim::FalSim, key: &str) -> service::fal_link::FalLink {
    let mut settings = api::Config::default().fal;
    settings.queue_url = sim.queue_url().to_string();
    settings.rest_url = sim.rest_url().to_string();
    settings.cdn_url = sim.cdn_url().to_string();
    settings.jwks_url = sim.jwks_url().to_string();
    service::fal_link::FalLink::new(&settings, secrecy::SecretString::from(key.to_string()))
        .expect("fal client")
}

impl TestApp {
    pub async fn spawn(pool: sqlx::PgPool) -> Self {
        Self::spawn_with(store::Store::new(pool), |_| {}).await
    }

    /// An app whose settings `configure` adjusts from the defaults.
    pub async fn spawn_with(store: store::Store, configure: impl FnOnce(&mut Settings)) -> Self {
        Self::start(store, configure, None, None).await
    }

    /// An app without fal whose blobs live in `blobs` (an S3 bucket, say).
    pub async fn spawn_on_blobs(pool: sqlx::PgPool, blobs: store::BlobStore) -> Self {
        Self::start(store::Store::new(pool), |_| {}, None, Some(blobs)).await
    }

    /// An app connected to a fresh fal simulator, with its workers running.
    pub async fn spawn_with_fal(pool: sqlx::PgPool, options: FalOptions) -> Self {
        Self::spawn_with_fal_and(pool, options, |_| {}).await
    }

    /// An app connected to a fresh fal simulator, whose settings `configure` adjusts.
    pub async fn spawn_with_fal_and(
        pool: sqlx::PgPool,
        options: FalOptions,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let sim = fal_sim::FalSim::start(options.sim)
            .await
            .expect("fal-sim starts");
        let key = options
            .key
            .unwrap_or_else(|| sim.default_key().expect("default key").to_string());
        Self::start(
            store::Store::new(pool),
            |settings| {
                settings.jobs.status_check_interval = options.status_check_interval;
                settings.jobs.timeout = options.training_timeout;
                configure(settings);
            },
            Some((Arc::new(sim), key)),
            options.blobs,
        )
        .await
    }

    /// A second instance of this service (another replica) on the same database, blob store
    /// and simulator, with its own port, server and workers. Uses the same API key.
    pub async fn replica(&self) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let mut app = TestApp {
            addr: listener.local_addr().expect("local addr"),
            base_url: String::new(),
            store: self.store.clone(),
            blobs: self.blobs.clone(),
            blobs_dir: tempfile::tempdir().expect("blob dir"),
            scratch_dir: tempfile::tempdir().expect("scratch dir"),
            client: self.client.clone(),
            key: self.key.clone(),
            sim: self.sim.clone(),
            settings: self.settings.clone(),
            running: None,
            shutdown: None,
            server: None,
        };
        app.base_url = format!("http://{}", app.addr);
        let fal_key = self
            .sim
            .as_ref()
            .and_then(|s| s.default_key())
            .unwrap_or_default()
            .to_string();
        app.serve(listener, &fal_key);
        app
    }

    async fn start(
        store: store::Store,
        configure: impl FnOnce(&mut Settings),
        fal: Option<(Arc<fal_sim::FalSim>, String)>,
        blobs: Option<store::BlobStore>,
    ) -> Self {
        let blobs_dir = tempfile::tempdir().expect("blob dir");
        let scratch_dir = tempfile::tempdir().expect("scratch dir");
        let blobs =
            blobs.unwrap_or_else(|| store::BlobStore::local(blobs_dir.path()).expect("blob store"));
        let mut settings = Settings {
            scratch_dir: scratch_dir.path().to_path_buf(),
            ..Settings::default()
        };
        // Tests stop and restart apps often; the hand-over delay is for load balancers.
        settings.shutdown.delay = Duration::ZERO;
        settings.workers.idle_poll = Duration::from_millis(50);
        // Tests drive the API far faster than a client would; those about limits set them.
        settings.tenants.key_requests_per_second = 100_000;
        settings.tenants.key_request_burst = 100_000;
        settings.workers.reconcile_tick = Duration::from_millis(50);
        configure(&mut settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let (sim, key) = match fal {
            Some((sim, key)) => (Some(sim), key),
            None => (None, String::new()),
        };
        let mut app = TestApp {
            addr: listener.local_addr().expect("local addr"),
            base_url: String::new(),
            store,
            blobs,
            blobs_dir,
            scratch_dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
            key: String::new(),
            sim,
            settings,
            running: None,
            shutdown: None,
            server: None,
        };
        app.base_url = format!("http://{}", app.addr);
        app.serve(listener, &key);
        // Apps on an unreachable or unmigrated database (readiness tests) get no key.
        if app.database_is_ready().await {
            app.key = app.new_key("tenant-a").await;
        }
        app
    }

    /// Whether the app's database is reachable and migrated. A pool that timed out waiting
    /// for a connection (every one busy while many tests run at once) says nothing about
    /// the database, so that answer is asked again until [`WAIT_DEADLINE`].
    async fn database_is_ready(&self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
        loop {
            match self.store.readiness().await {
                Ok(readiness) => return readiness == store::Readiness::Ready,
                Err(store::StoreError::Database(sqlx::Error::PoolTimedOut))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::task::yield_now().await
                }
                Err(_) => return false,
            }
        }
    }

    /// Serves on `listener` with the app's settings, with every worker running (the job
    /// workers only when fal is set up), as `avatars serve` does.
    fn serve(&mut self, listener: tokio::net::TcpListener, fal_key: &str) {
        let mut settings = self.settings.clone();
        settings.jobs.public_base_url = Some(self.base_url.clone());
        let resources = Resources {
            store: self.store.clone(),
            blobs: self.blobs.clone(),
            fal: self.sim.as_ref().map(|sim| fal_link(sim, fal_key)),
            listener,
        };
        let app = Application::build(settings, resources).expect("the application builds");
        self.running = Some(app.service().clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        self.shutdown = Some(shutdown);
        self.server = Some(tokio::spawn(async move {
            app.run_until_stopped(async move {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        }));
    }

    /// Stops this process's server and workers and starts new ones on the same address,
    /// database, blob store and simulator: a restart of the service.
    pub async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// A restart with settings `configure` changes (a new configuration deployed).
    pub async fn restart_with(mut self, configure: impl FnOnce(&mut Settings)) -> Self {
        configure(&mut self.settings);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind the same port");
        let key = self
            .sim
            .as_ref()
            .and_then(|s| s.default_key())
            .unwrap_or_default()
            .to_string();
        self.serve(listener, &key);
        self
    }

    /// Creates an API key for `tenant` (created when new).
    pub async fn new_key(&self, tenant: &str) -> String {
        let (_, key) = api::auth::create_api_key(&self.store, tenant, "test")
            .await
            .expect("create key");
        key.expose_secret().to_string()
    }

    /// The running application layer, to look at what it holds in memory.
    pub fn running(&self) -> &service::Service {
        self.running.as_ref().expect("the app is running")
    }

    /// The application layer on this app's database, blobs and settings, for tests that call
    /// a use case or worker step directly.
    pub fn service(&self) -> service::Service {
        self.service_on(self.store.clone())
    }

    /// [`TestApp::service`] on another store (a pool of its own, say, to watch its sessions).
    pub fn service_on(&self, store: store::Store) -> service::Service {
        service::Service::new(
            store,
            self.blobs.clone(),
            self.settings.clone(),
            None,
            api::event_bodies::render,
        )
        .expect("the service builds")
    }

    /// Waits until `probe` answers `Ok`, looking again whenever the service sequences an event
    /// (every job and avatar change does) and at least every 100 ms; after [`WAIT_DEADLINE`]
    /// fails the test with `what` and the probe's last `Err` (what it saw instead).
    pub async fn eventually<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut changes = self
            .running
            .as_ref()
            .map(|service| service.sequenced_events.subscribe());
        let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
        loop {
            let seen = match probe().await {
                Ok(value) => return value,
                Err(seen) => seen,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "never {what}; last seen: {seen}"
            );
            let change = async {
                match changes.as_mut() {
                    Some(changes) => {
                        let _ = changes.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            // Not every change is an event (delivery attempts, custody): look again soon anyway.
            let _ = tokio::time::timeout(Duration::from_millis(100), change).await;
        }
    }

    /// Waits until the JSON at `path` (read with the default key) satisfies `done`.
    pub async fn wait_for_json(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        self.eventually(what, || async {
            let current: Value = self
                .request(reqwest::Method::GET, path)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if done(&current) {
                Ok(current)
            } else {
                Err(format!("{path}: {current:#}"))
            }
        })
        .await
    }

    /// Waits until the training `id` satisfies `done`.
    pub async fn wait_for_training(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for_json(&format!("/trainings/{id}"), what, done)
            .await
    }

    /// `/metrics` as Prometheus reads it (asserting it answered 200).
    pub async fn scrape(&self) -> scrape::Scrape {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        scrape::Scrape::parse(&response.text().await.unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// The JSON body of a `GET` with this app's default key (whatever its status).
    pub async fn get_json(&self, path: &str) -> Value {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A request with this app's default key.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request_as(&self.key, method, path)
    }

    pub fn request_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }

    /// Creates an avatar with the default key and returns its JSON.
    pub async fn create_avatar(&self, body: Value) -> Value {
        let response = self
            .request(reqwest::Method::POST, "/avatars")
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 201, "creating {body}");
        response.json().await.expect("json")
    }

    /// Starts a training of the avatar with `body`; asserts the 202 and returns the training.
    /// fal-sim holds the callback of the next request it accepts, until
    /// [`TestApp::expire_lora_then_release_callback`].
    pub fn hold_next_callback(&self) {
        self.sim
            .as_ref()
            .expect("an app with fal-sim")
            .fault_next_requests(
                1,
                None,
                fal_sim::RequestFaults {
                    webhook: fal_sim::WebhookFaults {
                        hold: true,
                        ..fal_sim::WebhookFaults::default()
                    },
                    ..fal_sim::RequestFaults::default()
                },
            );
    }

    /// Once fal-sim finished the first training it was sent (its callback held by
    /// [`TestApp::hold_next_callback`]), expires the trained LoRA on fal's CDN and releases the
    /// callback: custody will find nothing to copy. Returns the LoRA's URL.
    pub async fn expire_lora_then_release_callback(&self) -> String {
        let sim = self.sim.as_ref().expect("an app with fal-sim");
        let deadline = Duration::from_secs(60);
        sim.wait_until(deadline, "fal finished the training", |s| {
            s.requests().first().is_some_and(|r| r.output.is_some())
        })
        .await
        .unwrap();
        let lora = sim.requests().remove(0).output.unwrap()["diffusers_lora_file"]["url"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(sim.expire_file(&lora));
        let mut released = 0;
        sim.wait_until(deadline, "fal's callback is released", |s| {
            released += s.release_held_webhooks(fal_sim::HeldWebhookOrder::Fifo);
            released > 0
        })
        .await
        .unwrap();
        lora
    }

    pub async fn start_training(&self, avatar_id: &str, body: Value) -> Value {
        let response = self
            .request(
                reqwest::Method::POST,
                &format!("/avatars/{avatar_id}/train"),
            )
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = response.status();
        let json: Value = response.json().await.expect("json");
        assert_eq!(status, 202, "{json:#}");
        json
    }

    /// Uploads `files` (name, bytes) to the avatar as one multipart request.
    pub async fn upload(
        &self,
        avatar_id: &str,
        files: Vec<(String, Vec<u8>)>,
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            let part = reqwest::multipart::Part::bytes(bytes)
                .file_name(name)
                .mime_str("application/octet-stream")
                .expect("mime");
            form = form.part("files", part);
        }
        self.request(
            reqwest::Method::POST,
            &format!("/avatars/{avatar_id}/photos"),
        )
        .multipart(form)
        .send()
        .await
        .expect("send")
    }

    /// Creates a `character` avatar and uploads `count` (at most 12) distinct portraits, each
    /// with one usable face, so the set trains; returns the avatar's id.
    pub async fn avatar_with_photos(&self, count: u64) -> String {
        let avatar = self
            .create_avatar(serde_json::json!({"name": "with photos", "kind": "character"}))
            .await;
        let id = avatar["id"].as_str().unwrap().to_string();
        if count > 0 {
            let files = images::portrait_set(count as usize);
            let response = self.upload(&id, files).await;
            assert_eq!(response.status(), 201);
        }
        id
    }

    /// Every blob file under the blob directory.
    pub fn blob_files(&self) -> Vec<std::path::PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.blobs_dir.path(), &mut out);
        out
    }

    /// Sends the stop signal (as SIGTERM does) without waiting for the app to stop.
    pub fn begin_stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// This process's identity in the leases it takes.
    pub fn worker_id(&self) -> uuid::Uuid {
        self.running.as_ref().expect("the app runs").worker_id
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Reads a response as a problem document, checking its content type first.
pub async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.text().await.expect("body");
    assert_eq!(
        content_type, "application/problem+json",
        "status {status} body {body}"
    );
    let json: Value = serde_json::from_str(&body).expect("problem is JSON");
    assert_eq!(json["status"], status, "problem status matches HTTP status");
    assert!(json["code"].is_string() && json["title"].is_string() && json["detail"].is_string());
    (status, json)
}

/// Waits until `condition` holds or `deadline` passes.
pub async fn wait_until<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if condition().await {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
