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

/// Splits a leading `--against <avatars binary>` off a benchmark's arguments: the earlier
/// build to measure in the same run (made absolute, since the optimised xtask may resolve
/// paths from elsewhere), and the arguments after it.
pub(crate) fn split_against(args: &[String]) -> Result<(Option<PathBuf>, &[String]), String> {
    match args {
        [flag, path, rest @ ..] if flag == "--against" => {
            let earlier = std::path::absolute(path).map_err(|e| format!("{path}: {e}"))?;
            Ok((Some(earlier), rest))
        }
        _ => Ok((None, args)),
    }
}

/// The arguments that hand `--against <earlier>` on to the optimised xtask.
pub(crate) fn against_args(against: Option<&Path>) -> Vec<std::ffi::OsString> {
    against
        .map(|earlier| vec!["--against".into(), earlier.as_os_str().to_owned()])
        .unwrap_or_default()
}

/// The service's statements since `pg_stat_statements` was last reset, costliest first:
/// (calls, total execution ms, the statement's text on one line, cut to 110 characters).
pub(crate) async fn service_statements(
    pool: &sqlx::PgPool,
) -> Result<Vec<(i64, f64, String)>, String> {
    sqlx::query_as(
        "SELECT calls, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND query NOT LIKE '%pg_stat_statements%'
         ORDER BY total_exec_time DESC",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| format!("reading pg_stat_statements: {e}"))
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

/// CPU seconds from /proc (in USER_HZ, 100 per second on Linux): the service, our PostgreSQL
/// (the postmaster, its live children and those it reaped), this process (the senders and the
/// simulator), this process's reaped children (pgbench), and the whole machine.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    pub service: f64,
    pub postgres: f64,
    pub own: f64,
    pub children: f64,
    pub machine: f64,
    pub wall: f64,
}

/// (utime + stime, cutime + cstime, ppid) of a process, in seconds.
fn proc_times(pid: &str) -> Option<(f64, f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let tick = |i: usize| fields.get(i)?.parse::<f64>().ok().map(|t| t / 100.0);
    Some((
        tick(11)? + tick(12)?,
        tick(13)? + tick(14)?,
        fields.get(1)?.parse().ok()?,
    ))
}

impl Cpu {
    pub fn sample(service: Option<u32>, postmaster: u32, at: Instant, origin: Instant) -> Cpu {
        let service = service
            .and_then(|pid| proc_times(&pid.to_string()))
            .map_or(0.0, |t| t.0);
        let mut postgres = proc_times(&postmaster.to_string()).map_or(0.0, |t| t.0 + t.1);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some((used, _, ppid)) = proc_times(pid) {
                if ppid == postmaster {
                    postgres += used;
                }
            }
        }
        let (own, children) = proc_times("self").map_or((0.0, 0.0), |t| (t.0, t.1));
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let line = stat.lines().next()?.to_string();
                let ticks: Vec<f64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
                let busy: f64 = ticks.iter().take(8).sum::<f64>()
                    - ticks.get(3).copied().unwrap_or(0.0)
                    - ticks.get(4).copied().unwrap_or(0.0);
                Some(busy / 100.0)
            })
            .unwrap_or(0.0);
        Cpu {
            service,
            postgres,
            own,
            children,
            machine,
            wall: at.duration_since(origin).as_secs_f64(),
        }
    }

    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            service: self.service - earlier.service,
            postgres: self.postgres - earlier.postgres,
            own: self.own - earlier.own,
            children: self.children - earlier.children,
            machine: self.machine - earlier.machine,
            wall: self.wall - earlier.wall,
        }
    }

    /// Cores busy with processes other than the ones named (the machine is shared).
    pub fn other_cores(&self) -> f64 {
        let ours = self.service + self.postgres + self.own + self.children;
        ((self.machine - ours) / self.wall.max(1e-9)).max(0.0)
    }
}

/// The pid of the cluster's postmaster, from its pid file.
pub(crate) fn postmaster_pid(cluster: &pgcluster::Cluster) -> Result<u32, String> {
    std::fs::read_to_string(cluster.data_dir().join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse().ok())
        .ok_or_else(|| "cannot read the postmaster's pid".to_string())
}
