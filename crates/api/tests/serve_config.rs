//! `avatars serve` as an operator starts it: a configuration that would lose data across
//! replicas stops it with one line naming the variable.

use std::process::Command;

#[test]
fn serve_refuses_to_start_without_a_shared_blob_store() {
    let output = Command::new(env!("CARGO_BIN_EXE_avatars"))
        .arg("serve")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("BIND_ADDR", "127.0.0.1:0")
        .env_remove("STORAGE_URL")
        .env_remove("FAL_KEY")
        .output()
        .expect("avatars runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("invalid configuration"))
        .unwrap_or_else(|| panic!("a configuration error: {stderr}"));
    assert!(
        line.starts_with("invalid configuration: STORAGE_URL: required"),
        "{line}"
    );
}
