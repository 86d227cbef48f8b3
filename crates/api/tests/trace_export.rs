//! `avatars serve` with `OTEL_EXPORTER_OTLP_ENDPOINT`: a request's span reaches the collector,
//! under the configured service name and in the caller's trace, when the process stops, however
//! long the batch delay.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;

type Bodies = Arc<Mutex<Vec<Bytes>>>;

async fn collect(State(bodies): State<Bodies>, body: Bytes) -> &'static str {
    bodies.lock().unwrap().push(body);
    ""
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn spans_are_flushed_when_serve_stops() {
    let bodies = Bodies::default();
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = collector.local_addr().unwrap();
    let router = axum::Router::new()
        .route("/v1/traces", axum::routing::post(collect))
        .with_state(bodies.clone());
    tokio::spawn(async move { axum::serve(collector, router).await });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let blobs = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_avatars"))
        .arg("serve")
        // Nobody listens there: the liveness probe needs no database.
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("STORAGE_URL", blobs.path())
        .env(
            "SECRETS_KEYS",
            "test:c2VjcmV0LWtleS1ieXRlcy1mb3ItdGhlLXJpbmctMDE=",
        )
        .env_remove("FAL_KEY")
        .env("SHUTDOWN_DELAY", "0")
        .env("SHUTDOWN_WORKER_GRACE", "1")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        )
        .env("OTEL_SERVICE_NAME", "avatars-export-test")
        // Longer than the test: only the flush at shutdown can send the span in time.
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("avatars serve starts");

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client
            .get(&url)
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .send()
            .await;
        if answer.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "avatars serve never answered /healthz"
        );
        // Start-up has nothing to wait on but the port opening.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        bodies.lock().unwrap().is_empty(),
        "nothing sent before the delay"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");

    let bodies = bodies.lock().unwrap();
    let trace_bytes = hex::decode(trace_id).unwrap();
    assert!(
        bodies.iter().any(|b| contains(b, &trace_bytes)),
        "the request's span in the caller's trace reached the collector ({} exports)",
        bodies.len()
    );
    assert!(bodies.iter().any(|b| contains(b, b"avatars-export-test")));
}
