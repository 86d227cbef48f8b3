//! Project tasks.
//!
//! `cargo xtask test [cargo test args]` runs the whole test suite. Without `DATABASE_URL` it
//! starts a throwaway PostgreSQL cluster from the local binaries, points the tests at it and
//! removes it afterwards, also when interrupted. With `DATABASE_URL` set it uses that server
//! (the role needs CREATEDB: every test creates its own database).

// The benchmarks seed their databases in transactions they never abandon during BEGIN, which
// is what `Store::begin` guards against.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use pgcluster::{Cluster, ClusterOptions};

mod bench_hostile;
mod bench_photos;
mod bench_requests;
mod bench_retention;
mod bench_support;
mod bench_webhooks;
mod cluster;
mod face_photos;
mod moto;
mod panics;

/// A `cargo` command for the tasks to run, without the variables `cargo run` set for this
/// process. Build scripts watch some of them (ring's watches `CARGO_MANIFEST_DIR`): inherited,
/// they would make every cargo run from here rebuild most of the tree, and the next cargo run
/// from a shell rebuild it once more.
pub(crate) fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_by_cargo_run = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            );
        if set_by_cargo_run {
            command.env_remove(name);
        }
    }
    command
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, or `target` in the workspace).
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("test") => run_tests(args.collect()),
        Some("bench-photos") => {
            match bench_photos::run(&workspace_root(), &args.collect::<Vec<_>>()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("xtask: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("bench-hostile") => match bench_hostile::run(&workspace_root(), args.next()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("xtask: {error}");
                ExitCode::FAILURE
            }
        },
        Some("face-photos") => match face_photos::run(&workspace_root()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("xtask: {error}");
                ExitCode::FAILURE
            }
        },
        Some("cluster") => {
            let small = match args.next().as_deref() {
                None => false,
                Some("--small") => true,
                Some(other) => {
                    eprintln!("xtask cluster: unknown argument {other:?} (only --small)");
                    return ExitCode::from(2);
                }
            };
            match cluster::run(&workspace_root(), small) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("xtask: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("bench-retention") => match bench_retention::run(&workspace_root(), args.next()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("xtask: {error}");
                ExitCode::FAILURE
            }
        },
        Some("bench-requests") => {
            match bench_requests::run(&workspace_root(), &args.collect::<Vec<_>>()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("xtask: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("bench-webhooks") => {
            match bench_webhooks::run(&workspace_root(), &args.collect::<Vec<_>>()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("xtask: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: cargo xtask test [extra `cargo test` arguments]");
            eprintln!("       cargo xtask cluster [--small]");
            eprintln!("       cargo xtask bench-photos [--against <avatars binary>]");
            eprintln!("       cargo xtask bench-hostile [part of a case name]");
            eprintln!("       cargo xtask bench-webhooks [--against <avatars binary>]");
            eprintln!(
                "       cargo xtask bench-requests [--against <avatars binary>] [callers...]"
            );
            eprintln!("       cargo xtask bench-retention [old events, default 1000000]");
            eprintln!("       cargo xtask face-photos");
            ExitCode::from(2)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run_tests(extra: Vec<String>) -> ExitCode {
    let root = workspace_root();
    if let Err(message) = ensure_browser()
        .and_then(|()| ensure_prometheus())
        .and_then(|()| moto::ensure())
    {
        eprintln!("xtask: {message}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("xtask: {error}");
            return ExitCode::FAILURE;
        }
    };
    let scratch = root
        .join("target")
        .join(format!("xtask-s3-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&scratch);
    // Held until the end of this function: dropping it stops the server.
    let s3 = match runtime.block_on(moto::Moto::start(&scratch.join("moto.log"))) {
        Ok(moto) => {
            eprintln!(
                "xtask: started an S3-compatible server (moto) at {}",
                moto.endpoint
            );
            moto
        }
        Err(error) => {
            eprintln!("xtask: {error}");
            return ExitCode::FAILURE;
        }
    };

    // Held until the end of this function: dropping it stops the server.
    let mut cluster = None;
    let database_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            eprintln!("xtask: using the PostgreSQL server named by DATABASE_URL");
            url
        }
        _ => {
            let data_dir = root
                .join("target")
                .join(format!("xtask-pg-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&data_dir);
            match Cluster::start(&data_dir, &ClusterOptions::test()) {
                Ok(started) => {
                    eprintln!(
                        "xtask: started a private PostgreSQL on 127.0.0.1:{}",
                        started.port()
                    );
                    let url = started.url("postgres");
                    cluster = Some((started, data_dir));
                    url
                }
                Err(error) => {
                    eprintln!("xtask: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };

    // The child's pid, so a SIGTERM/SIGINT sent to us alone still ends the test run before
    // we stop the database under it.
    let child_pid = Arc::new(AtomicI32::new(0));
    {
        let child_pid = Arc::clone(&child_pid);
        let _ = ctrlc::set_handler(move || {
            let pid = child_pid.load(Ordering::SeqCst);
            if pid > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        });
    }

    let mut panics = Vec::new();
    let status = cargo()
        .current_dir(&root)
        .args(["test", "--workspace"])
        .args(&extra)
        .env("DATABASE_URL", &database_url)
        .env("AVATARS_TEST_S3_ENDPOINT", &s3.endpoint)
        .env("AVATARS_TEST_S3_BUCKET", moto::BUCKET)
        .env("AVATARS_TEST_S3_ACCESS_KEY_ID", &s3.access_key_id)
        .env("AVATARS_TEST_S3_SECRET_ACCESS_KEY", &s3.secret_access_key)
        // Four at once: every `#[sqlx::test]` pool may hold 5 connections, all taken from
        // one parent pool of 20 per test binary, and a running app keeps the ones it took. More
        // tests at once would leave some waiting on others to finish, past the pools' 30 s
        // acquire timeout on a slow machine.
        .env(
            "RUST_TEST_THREADS",
            std::env::var("RUST_TEST_THREADS").unwrap_or_else(|_| "4".into()),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child_pid.store(child.id() as i32, Ordering::SeqCst);
            if let Some(output) = child.stdout.take() {
                panics = panics::echo_and_collect(output);
            }
            child.wait()
        });
    let failed = !matches!(&status, Ok(status) if status.success());
    if failed && !panics.is_empty() {
        eprintln!("\nxtask: why tests failed (each panic once more, without its backtrace):");
        for panic in &panics {
            eprintln!("\n{panic}");
        }
    }

    if let Some((mut cluster, data_dir)) = cluster.take() {
        if let Err(error) = cluster.stop() {
            eprintln!("xtask: {error}");
        }
        drop(cluster);
        let _ = std::fs::remove_dir_all(data_dir);
    }
    drop(s3);
    drop(runtime);
    let _ = std::fs::remove_dir_all(&scratch);

    // The whole suite (no filter) ends with a small run of the local cluster: three `serve`
    // processes, one of them killed and restarted mid-work, nothing lost.
    let status = match status {
        Ok(status) if status.success() && extra.is_empty() => {
            eprintln!("xtask: the local cluster, small run (cargo xtask cluster --small)");
            match cluster::run(&root, true) {
                Ok(()) => Ok(status),
                Err(error) => {
                    eprintln!("xtask: cluster --small: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        other => other,
    };

    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("xtask: running cargo test: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The Prometheus test scrapes the service with Debian's Prometheus server. The package's
/// own service is kept from starting while it installs (the test starts its own server).
fn ensure_prometheus() -> Result<(), String> {
    let present = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if present("prometheus") && present("promtool") {
        return Ok(());
    }
    if nix::unistd::geteuid().is_root() && present("apt-get") {
        eprintln!("xtask: installing prometheus for the Prometheus scrape test");
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let own_policy = !policy.exists()
            && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok()
            && Command::new("chmod")
                .args(["+x", "/usr/sbin/policy-rc.d"])
                .status()
                .is_ok_and(|s| s.success());
        let install = || {
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "prometheus",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        let ok = install()
            || (Command::new("apt-get")
                .args(["update", "-q"])
                .status()
                .is_ok_and(|s| s.success())
                && install());
        if own_policy {
            let _ = std::fs::remove_file(policy);
        }
        if ok && present("prometheus") && present("promtool") {
            return Ok(());
        }
    }
    Err("the Prometheus scrape test needs Prometheus: install Debian's `prometheus` package".into())
}

/// The Swagger UI test drives Debian's Chromium through ChromeDriver.
fn ensure_browser() -> Result<(), String> {
    let present = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if present("chromium") && present("chromedriver") {
        return Ok(());
    }
    if nix::unistd::geteuid().is_root() && present("apt-get") {
        eprintln!("xtask: installing chromium and chromium-driver for the Swagger UI test");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "chromium", "chromium-driver"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let ok = ok
            || (Command::new("apt-get")
                .args(["update", "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
                && Command::new("apt-get")
                    .args(["install", "-y", "-q", "chromium", "chromium-driver"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false));
        if ok && present("chromium") && present("chromedriver") {
            return Ok(());
        }
    }
    Err("the Swagger UI test needs Chromium and ChromeDriver: install Debian's `chromium` and `chromium-driver` packages".into())
}
