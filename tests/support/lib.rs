//! Test harness: the real router served over real HTTP on a loopback port, backed by the test's
//! own PostgreSQL database.

use std::net::SocketAddr;
use std::time::Duration;

use api::{AppState, ServiceSettings};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod browser;
pub mod images;

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
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn(pool: sqlx::PgPool) -> Self {
        Self::spawn_with(store::Store::new(pool), |_| {}).await
    }

    /// An app whose settings `configure` adjusts from the defaults.
    pub async fn spawn_with(
        store: store::Store,
        configure: impl FnOnce(&mut ServiceSettings),
    ) -> Self {
        let blobs_dir = tempfile::tempdir().expect("blob dir");
        let scratch_dir = tempfile::tempdir().expect("scratch dir");
        let blobs = store::BlobStore::local(blobs_dir.path()).expect("blob store");
        let mut settings = ServiceSettings {
            scratch_dir: scratch_dir.path().to_path_buf(),
            ..ServiceSettings::default()
        };
        configure(&mut settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let state = AppState::new(store.clone(), blobs.clone(), settings).expect("app state");
        let router = api::router(state);
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            api::serve(listener, router, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        let mut app = TestApp {
            addr,
            base_url: format!("http://{addr}"),
            store,
            blobs,
            blobs_dir,
            scratch_dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
            key: String::new(),
            shutdown: Some(shutdown),
            server: Some(server),
        };
        // Apps on an unreachable or unmigrated database (readiness tests) get no key.
        if matches!(app.store.readiness().await, Ok(store::Readiness::Ready)) {
            app.key = app.new_key("tenant-a").await;
        }
        app
    }

    /// Creates an API key for `tenant` (created when new).
    pub async fn new_key(&self, tenant: &str) -> String {
        let (_, key) = api::auth::create_api_key(&self.store, tenant, "test")
            .await
            .expect("create key");
        key.expose_secret().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
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

    /// Creates an avatar and uploads `count` distinct valid photos; returns the avatar's id.
    pub async fn avatar_with_photos(&self, count: u64) -> String {
        let avatar = self
            .create_avatar(serde_json::json!({"name": "with photos", "kind": "character"}))
            .await;
        let id = avatar["id"].as_str().unwrap().to_string();
        if count > 0 {
            let files = (0..count)
                .map(|i| (format!("p{i}.jpg"), images::jpeg(1000 + i)))
                .collect();
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
