//! The `fal-sim` binary starts, prints its base URLs and serves them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child on drop, so a failed assertion does not leave it running.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_prints_its_base_urls_and_serves_them() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_fal-sim"))
            .args(["--bind", "127.0.0.1:0", "--key", "extra-id:extra-secret"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("binary starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut vars = std::collections::HashMap::new();
    while vars.len() < 6 {
        assert!(
            Instant::now() < deadline,
            "binary did not print its URLs in time"
        );
        let line = lines.next().expect("stdout open").expect("utf-8");
        assert!(
            line.starts_with("FAL_"),
            "stdout carries only NAME=value lines: {line}"
        );
        let (name, value) = line.split_once('=').expect("NAME=value");
        vars.insert(name.to_owned(), value.to_owned());
    }
    for name in [
        "FAL_QUEUE_URL",
        "FAL_REST_URL",
        "FAL_CDN_URL",
        "FAL_JWKS_URL",
        "FAL_SIM_CONTROL_URL",
        "FAL_KEY",
    ] {
        assert!(vars.contains_key(name), "{name} printed");
    }
    assert!(vars["FAL_QUEUE_URL"].starts_with("http://127.0.0.1:"));
    assert!(vars["FAL_JWKS_URL"].ends_with("/.well-known/jwks.json"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let jwks: serde_json::Value = reqwest::get(&vars["FAL_JWKS_URL"])
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
        let submit = |key: &'static str| {
            reqwest::Client::new()
                .post(format!("{}/fal-ai/flux-lora", vars["FAL_QUEUE_URL"]))
                .header("authorization", format!("Key {key}"))
                .json(&serde_json::json!({"prompt": "x"}))
                .send()
        };
        assert_eq!(submit("extra-id:extra-secret").await.unwrap().status(), 200);
        assert_eq!(submit("other-id:other-secret").await.unwrap().status(), 401);
    });
}

/// In a container network clients reach the simulator by a service name, not the address it
/// binds: every URL it hands out (queue, CDN, status URLs in answers) uses `FAL_SIM_PUBLIC_URL`.
#[test]
fn urls_handed_out_use_the_public_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://localhost:{port}");
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_fal-sim"))
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .env("FAL_SIM_PUBLIC_URL", format!("{public}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("binary starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut vars = std::collections::HashMap::new();
    for line in BufReader::new(stdout).lines().take(6) {
        let line = line.expect("utf-8");
        let (name, value) = line.split_once('=').expect("NAME=value");
        vars.insert(name.to_owned(), value.to_owned());
    }
    assert_eq!(vars["FAL_QUEUE_URL"], format!("{public}/queue"));
    assert_eq!(vars["FAL_CDN_URL"], format!("{public}/cdn"));
    assert_eq!(
        vars["FAL_JWKS_URL"],
        format!("{public}/rest/.well-known/jwks.json")
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/fal-ai/flux-lora", vars["FAL_QUEUE_URL"]))
            .header("authorization", format!("Key {}", vars["FAL_KEY"]))
            .json(&serde_json::json!({"prompt": "x"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status_url = answer["status_url"].as_str().expect("status_url");
        assert!(
            status_url.starts_with(&format!("{public}/queue/")),
            "{answer}"
        );
        let status = reqwest::Client::new()
            .get(status_url)
            .header("authorization", format!("Key {}", vars["FAL_KEY"]))
            .send()
            .await
            .unwrap();
        // Reached through the public URL: queued or running (202), or done (200).
        assert!(status.status().is_success(), "{}", status.status());
    });
}
