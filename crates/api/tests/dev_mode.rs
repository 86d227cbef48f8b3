//! `avatars dev` as a newcomer runs it: nothing configured, a private PostgreSQL, a dev key,
//! and nothing left running after SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api::server_timing::Timing;

/// `avatars dev` in a data directory of its own, with `env` set, as far as its banner.
struct Dev {
    /// Taken by [`Dev::stop`]; a test that fails before stops it on drop.
    child: Option<std::process::Child>,
    data_dir: std::path::PathBuf,
    base: String,
    key: String,
}

impl Dev {
    fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let data_dir =
            std::env::temp_dir().join(format!("avatars-{name}-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let mut child = Command::new(env!("CARGO_BIN_EXE_avatars"))
            .args(["dev", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .env_remove("DATABASE_URL")
            .env_remove("FAL_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("avatars dev starts");

        // The banner names the base URL and the key; read it on a thread with a deadline. The
        // thread reads stdout to its end, so the process never writes into a closed pipe.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut base, mut key) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(90);
        while key.is_none() && Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                if let Some(url) = line.trim().strip_prefix("base URL:") {
                    base = Some(url.trim().to_string());
                }
                if let Some(k) = line.trim().strip_prefix("dev API key:") {
                    key = Some(k.trim().to_string());
                }
            }
        }
        Self {
            child: Some(child),
            data_dir,
            base: base.expect("base URL printed"),
            key: key.expect("dev key printed"),
        }
    }

    /// Stops it with SIGTERM, waits for a clean exit and returns its data directory.
    async fn stop(mut self) -> std::path::PathBuf {
        let mut child = self.child.take().expect("running");
        terminate(&child);
        let status = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .expect("avatars dev exits after SIGTERM")
        .unwrap()
        .unwrap();
        assert!(status.success(), "{status:?}");
        self.data_dir.clone()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let _ = child.wait();
        }
    }
}

/// Asks the process to stop as an operator would (its PostgreSQL stops with it).
fn terminate(child: &std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

#[tokio::test]
async fn dev_mode_serves_with_embedded_defaults_and_stops_cleanly() {
    let dev = Dev::start("dev", &[]);
    let (base, key) = (dev.base.clone(), dev.key.clone());

    let client = reqwest::Client::new();
    let docs = client.get(format!("{base}/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    // Timings are reported only when asked for.
    assert!(docs.headers().get("server-timing").is_none());
    let created: serde_json::Value = client
        .post(format!("{base}/avatars"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "dev", "kind": "character"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("created");
    let fetched = client
        .get(format!("{base}/avatars/{id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);

    // The whole pipeline works offline: photos, a training on the in-process fal-sim, and its
    // signed callback.
    // Real portraits (one face each, see `cargo xtask face-photos`): a `character` avatar only
    // trains from photos with a usable face.
    let mut form = reqwest::multipart::Form::new();
    for i in 1..=10 {
        let path = format!(
            "{}/../../tests/fixtures/faces/portrait-{i:02}.jpg",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(bytes).file_name(format!("{i}.jpg")),
        );
    }
    let uploaded = client
        .post(format!("{base}/avatars/{id}/photos"))
        .bearer_auth(&key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201);
    // A developer's webhook receiver on this machine, over plain http: allowed in dev mode.
    let (hook_tx, mut hook_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_port = hook_listener.local_addr().unwrap().port();
    let hook_app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let _ = hook_tx.send(body);
            std::future::ready(axum::http::StatusCode::NO_CONTENT)
        }),
    );
    tokio::spawn(async move { axum::serve(hook_listener, hook_app).await });
    let endpoint = client
        .post(format!("{base}/webhook-endpoints"))
        .bearer_auth(&key)
        .json(&serde_json::json!({
            "url": format!("http://localhost:{hook_port}/hook"),
            "event_types": ["training.succeeded"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        endpoint.status(),
        201,
        "{}",
        endpoint.text().await.unwrap_or_default()
    );

    // Listen for the training's end before starting it, so the wait is on the service's own
    // announcement.
    let mut events = client
        .get(format!(
            "{base}/events?avatar_id={id}&types=training.succeeded,training.failed"
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let training: serde_json::Value = client
        .post(format!("{base}/avatars/{id}/train"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"preset": "fast"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let training_url = format!(
        "{base}/trainings/{}",
        training["id"].as_str().expect("training started")
    );
    let announced = tokio::time::timeout(Duration::from_secs(120), async {
        let mut received = String::new();
        while !received.contains("\n\n") || !received.contains("data:") {
            match events.chunk().await.unwrap() {
                Some(chunk) => received.push_str(&String::from_utf8_lossy(&chunk)),
                None => break,
            }
        }
        received
    })
    .await
    .expect("the dev training ends within two minutes");
    assert!(
        announced.contains("training.succeeded"),
        "the dev training succeeded: {announced}"
    );
    let current: serde_json::Value = client
        .get(&training_url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(current["model"].is_object(), "{current:#}");
    let delivered = tokio::time::timeout(Duration::from_secs(60), hook_rx.recv())
        .await
        .expect("the local receiver gets the webhook within a minute")
        .expect("a delivery");
    assert!(delivered.contains("training.succeeded"), "{delivered}");

    let data_dir = dev.stop().await;
    // A cleanly stopped PostgreSQL removes its pid file.
    assert!(
        !data_dir.join("postgres/postmaster.pid").exists(),
        "PostgreSQL was stopped"
    );
    assert!(
        data_dir.join("postgres/PG_VERSION").exists(),
        "data is kept"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// `SERVER_TIMING=true`: every answer says how long its request spent in the database and
/// outside it.
#[tokio::test]
async fn server_timing_reports_each_requests_database_time() {
    let dev = Dev::start("server-timing", &[("SERVER_TIMING", "true")]);
    let client = reqwest::Client::new();

    // A request that reads and writes the database: its statements are counted.
    let created = client
        .post(format!("{}/avatars", dev.base))
        .bearer_auth(&dev.key)
        .json(&serde_json::json!({"name": "timed", "kind": "style"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let timing = server_timing(&created);
    assert!(timing.statements >= 2, "{timing:?}");
    assert!(
        timing.database > Duration::ZERO && timing.app > Duration::ZERO,
        "{timing:?}"
    );

    // One that needs no database says so, and is still timed.
    let live = client
        .get(format!("{}/healthz", dev.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let timing = server_timing(&live);
    assert_eq!((timing.database, timing.statements), (Duration::ZERO, 0));

    let data_dir = dev.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// What an answer's `Server-Timing` header says.
fn server_timing(response: &reqwest::Response) -> Timing {
    let header = response
        .headers()
        .get("server-timing")
        .expect("a Server-Timing header")
        .to_str()
        .unwrap();
    Timing::parse(header).unwrap_or_else(|| panic!("db and app times in {header}"))
}
