//! Test harness: the real router served over real HTTP on a loopback port, backed by the test's
//! own PostgreSQL database.

use std::net::SocketAddr;
use std::time::Duration;

use api::{AppState, HttpLimits};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod browser;

/// A running instance of the service. Stops when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base_url: String,
    pub store: store::Store,
    pub client: reqwest::Client,
    /// A key of the tenant `tenant-a`.
    pub key: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn(pool: sqlx::PgPool) -> Self {
        Self::spawn_with(store::Store::new(pool), HttpLimits::default()).await
    }

    pub async fn spawn_with(store: store::Store, limits: HttpLimits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let router = api::router(AppState::new(store.clone(), limits));
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
