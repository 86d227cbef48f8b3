//! Everything the service logs about a request, captured at TRACE for every target, holds
//! neither the caller's API key nor a webhook token.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use http::Request;
use tower::ServiceExt;

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

#[tokio::test]
async fn api_keys_and_webhook_tokens_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    // A database nobody listens on: authentication fails after logging its attempt.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store =
        store::Store::connect_lazy(&format!("postgres://nobody@127.0.0.1:{port}/none"), 1).unwrap();
    let blobs_dir = std::env::temp_dir().join(format!("avatars-log-test-{}", std::process::id()));
    let blobs = store::BlobStore::local(&blobs_dir).unwrap();
    let service = service::Service::new(
        store,
        blobs,
        service::Settings::default(),
        None,
        api::event_bodies::render,
    )
    .unwrap();
    let state = api::AppState::new(service);
    let router = api::router(state);

    let request = Request::get("/avatars")
        .header(
            "authorization",
            "Bearer avk_secret-key-that-must-not-be-logged",
        )
        .header("x-request-id", "trace-this-request")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 503);
    let request = Request::post(
        "/webhooks/fal?job=00000000-0000-0000-0000-000000000000&token=webhook-token-secret",
    )
    .header("x-request-id", "trace-the-webhook")
    .body(Body::from("{}"))
    .unwrap();
    router.oneshot(request).await.unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("trace-this-request") && logs.contains("trace-the-webhook"),
        "the requests were logged: {logs}"
    );
    assert!(
        !logs.contains("secret-key-that-must-not-be-logged"),
        "{logs}"
    );
    assert!(!logs.contains("webhook-token-secret"), "{logs}");
    let _ = std::fs::remove_dir_all(blobs_dir);
}
