//! Everything the service logs while it registers an endpoint, signs and delivers events to
//! it (failing, then succeeding) and rotates its secret, captured at TRACE for every target,
//! holds none of the endpoint's signing secrets.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A receiver that fails every other call, so both the failure and the success paths log.
async fn receiver() -> (std::net::SocketAddr, tokio::sync::watch::Receiver<u32>) {
    let (counter, calls) = tokio::sync::watch::channel(0u32);
    let counter = Arc::new(counter);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                let mut calls = 0;
                counter.send_modify(|count| {
                    *count += 1;
                    calls = *count;
                });
                if calls % 2 == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn webhook_secrets_never_reach_the_logs(pool: sqlx::PgPool) {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let (hook, mut calls) = receiver().await;
    let store = store::Store::new(pool);
    let blobs_dir = tempfile::tempdir().unwrap();
    let blobs = store::BlobStore::local(blobs_dir.path()).unwrap();
    let mut settings = service::Settings::default();
    settings.fetch.allow_http = true;
    settings.fetch.allowed_private = vec![hook];
    settings.events.retry_scale = 0.0001;
    settings.events.relay_poll = Duration::from_millis(20);
    settings.events.sequencer_poll = Duration::from_millis(20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let resources = api::application::Resources {
        store: store.clone(),
        blobs,
        fal: None,
        listener,
    };
    let app = api::Application::build(settings, resources).unwrap();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let (_, key) = api::auth::create_api_key(&store, "tenant", "test")
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(key.expose_secret())
    };

    let created: Value = call(reqwest::Method::POST, "/webhook-endpoints")
        .json(&json!({"url": format!("http://{hook}/hook")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first_secret = created["secret"].as_str().unwrap().to_string();
    let endpoint = created["id"].as_str().unwrap().to_string();
    let rotated: Value = call(
        reqwest::Method::POST,
        &format!("/webhook-endpoints/{endpoint}/rotate-secret"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let second_secret = rotated["secret"].as_str().unwrap().to_string();
    for name in ["one", "two"] {
        let avatar: Value = call(reqwest::Method::POST, "/avatars")
            .json(&json!({"name": name, "kind": "character"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = avatar["id"].as_str().unwrap();
        let deleted = call(reqwest::Method::DELETE, &format!("/avatars/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 204);
    }
    // Two events, each failing once then delivered: four calls.
    tokio::time::timeout(Duration::from_secs(30), calls.wait_for(|count| *count >= 4))
        .await
        .expect("deliveries stalled")
        .unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("webhook_deliveries"),
        "the relay's work was logged"
    );
    for secret in [&first_secret, &second_secret] {
        let key_part = secret.trim_start_matches("whsec_");
        assert!(!logs.contains(key_part), "a signing secret was logged");
    }
}
