//! `avatars serve` as an operator starts it: a configuration that would lose data across
//! replicas stops it with one line naming the variable.

use std::process::Command;

const RING: &str = "k1:MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=";

/// The one `invalid configuration` line `avatars serve` printed, after checking it exited 2.
fn configuration_error(output: &std::process::Output) -> String {
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .find(|l| l.contains("invalid configuration"))
        .unwrap_or_else(|| panic!("a configuration error: {stderr}"))
        .to_string()
}

#[test]
fn serve_refuses_to_start_without_a_key_ring() {
    let output = Command::new(env!("CARGO_BIN_EXE_avatars"))
        .arg("serve")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("STORAGE_URL", std::env::temp_dir())
        .env_remove("SECRETS_KEYS")
        .output()
        .expect("avatars runs");
    let line = configuration_error(&output);
    assert!(
        line.starts_with("invalid configuration: SECRETS_KEYS: required for `avatars serve`"),
        "{line}"
    );
}

#[test]
fn a_bad_key_ring_is_named_without_its_keys() {
    let short = "c2hvcnQta2V5";
    let output = Command::new(env!("CARGO_BIN_EXE_avatars"))
        .arg("serve")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("SECRETS_KEYS", format!("k1:{short}"))
        .output()
        .expect("avatars runs");
    let line = configuration_error(&output);
    assert!(
        line.starts_with("invalid configuration: SECRETS_KEYS: key \"k1\" is 9 bytes"),
        "{line}"
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains(short));
}

#[test]
fn serve_refuses_to_start_without_a_shared_blob_store() {
    let output = Command::new(env!("CARGO_BIN_EXE_avatars"))
        .arg("serve")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("SECRETS_KEYS", RING)
        .env_remove("STORAGE_URL")
        .env_remove("FAL_KEY")
        .output()
        .expect("avatars runs");
    let line = configuration_error(&output);
    assert!(
        line.starts_with("invalid configuration: STORAGE_URL: required"),
        "{line}"
    );
}
