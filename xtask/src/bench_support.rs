//! What the benchmarks that run `avatars serve` share: Ctrl-C handling, the optimised re-run,
//! their work directory, waiting for readiness, the service log's tail for errors, and photos.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bench_photos::ServerGuard;

/// Set by Ctrl-C: senders and waits stop, and the guards clean up.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Sets [`INTERRUPTED`] on Ctrl-C.
pub(crate) fn stop_on_ctrl_c() {
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
}

pub(crate) fn interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Builds the release xtask and runs `xtask <subcommand> <args>` in it: the load generator
/// shares the cores with the service, so it runs optimised.
pub(crate) fn run_optimised(
    root: &Path,
    subcommand: &str,
    args: &[std::ffi::OsString],
) -> Result<(), String> {
    eprintln!("bench: building the optimised xtask (the load shares the cores with the service)");
    let status = crate::cargo()
        .current_dir(root)
        .args(["build", "--release", "-q", "-p", "xtask"])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("building the release xtask failed".into());
    }
    // Ctrl-C reaches both processes: this one just waits for the other to clean up.
    let _ = ctrlc::set_handler(|| {});
    let status = Command::new(crate::target_dir(root).join("release/xtask"))
        .current_dir(root)
        .arg(subcommand)
        .args(args)
        .status()
        .map_err(|e| format!("running the release xtask: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("the benchmark failed".into())
    }
}

/// A benchmark's work directory, emptied when made and removed when dropped.
pub(crate) struct WorkDir(pub(crate) PathBuf);

impl WorkDir {
    pub(crate) fn fresh(dir: PathBuf) -> Result<Self, String> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (at most 30 s) until `avatars serve` at `base` is ready; fails at once if it exits.
pub(crate) async fn wait_ready(
    client: &reqwest::Client,
    base: &str,
    server: &mut ServerGuard,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        interrupted()?;
        if let Ok(Some(status)) = server.0.try_wait() {
            return Err(format!("avatars serve exited: {status}"));
        }
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the service did not become ready within 30 s".into())
}

/// The last ten lines of the service's log, for an error message.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(10);
    format!(
        "service log ({} lines, last {}):\n{}",
        lines.len(),
        lines.len() - start,
        lines[start..].join("\n")
    )
}

/// Distinct small JPEGs that pass every check (512x512).
pub(crate) fn small_jpegs(count: usize) -> Result<Vec<Vec<u8>>, String> {
    (0..count)
        .map(|i| {
            let image = image::RgbImage::from_fn(512, 512, |x, y| {
                image::Rgb([
                    ((x + i as u32) % 256) as u8,
                    ((y * 3 + i as u32 / 256) % 256) as u8,
                    ((x ^ y) % 256) as u8,
                ])
            });
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
                .encode_image(&image)
                .map_err(|e| e.to_string())?;
            Ok(out)
        })
        .collect()
}

/// The `p`-th quantile (0 to 1, nearest rank) of `sorted` latencies, in milliseconds; 0 when
/// there are none.
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}
