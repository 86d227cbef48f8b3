//! `cargo xtask bench-photos`: photo intake throughput and the service's peak memory.
//!
//! Builds the release binary, starts a private PostgreSQL, and for each batch size starts a
//! fresh `avatars serve` (so its peak memory belongs to that batch size alone), uploads
//! batches of ~5 MB JPEGs (each with a real face from `tests/fixtures/faces`) in one multipart
//! request each with curl, and prints the throughput of validated-and-stored photo bytes and
//! the process's peak resident memory (VmHWM).
//!
//! `cargo xtask bench-photos --against <avatars binary>` (repeatable) runs every batch with
//! that binary too, interleaved with this build's, so builds are compared in one run on one
//! machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgcluster::{Cluster, ClusterOptions};

const BATCHES: [usize; 2] = [5, 20];
const ROUNDS: usize = 3;

pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let binary = release_binary(root)?;
    let mut builds = vec![("this build".to_string(), binary.clone())];
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let other = match (arg.as_str(), args.next()) {
            ("--against", Some(other)) => PathBuf::from(other),
            _ => {
                return Err(
                    "usage: cargo xtask bench-photos [--against <avatars binary>]...".into(),
                )
            }
        };
        if !other.is_file() {
            return Err(format!("{}: no such binary", other.display()));
        }
        builds.push((other.display().to_string(), other));
    }
    let work = root.join("target/bench-photos");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;

    let photos = generate_photos(
        root,
        &work.join("photos"),
        *BATCHES.iter().max().unwrap_or(&20),
    )?;
    let mean_mb =
        photos.iter().map(|p| file_len(p)).sum::<u64>() as f64 / photos.len() as f64 / 1e6;
    eprintln!(
        "bench: {} photos of {mean_mb:.1} MB on average",
        photos.len()
    );

    let mut cluster =
        Cluster::start(&work.join("pg"), &ClusterOptions::test()).map_err(|e| e.to_string())?;
    cluster
        .ensure_database("bench")
        .map_err(|e| e.to_string())?;
    let database_url = cluster.url("bench");
    let (_, ring) = service::secrets::KeyRing::generate("bench");
    let env = |command: &mut Command| {
        command
            .env("DATABASE_URL", &database_url)
            .env("STORAGE_URL", work.join("blobs"))
            .env("SECRETS_KEYS", secrecy::ExposeSecret::expose_secret(&ring))
            .env("RUST_LOG", "warn");
    };
    let mut migrate = Command::new(&binary);
    env(&mut migrate);
    check(migrate.arg("migrate").output(), "avatars migrate")?;
    let mut create_key = Command::new(&binary);
    env(&mut create_key);
    let key_output = check(
        create_key
            .args(["api-keys", "create", "--tenant", "bench"])
            .output(),
        "avatars api-keys create",
    )?;
    let key = String::from_utf8_lossy(&key_output.stdout)
        .trim()
        .to_string();

    println!();
    println!("photo intake: one multipart request per batch, release build, {ROUNDS} rounds each");
    println!(
        "{:>6} {:>8} {:>10} {:>10} {:>12} {:>14}  build",
        "batch", "MB", "best s", "median s", "best MB/s", "peak RSS MB"
    );
    for batch in BATCHES {
        for (build, binary) in &builds {
            let port = free_port()?;
            let mut serve = Command::new(binary);
            env(&mut serve);
            let mut server = ServerGuard(
                serve
                    .arg("serve")
                    .env("BIND_ADDR", format!("127.0.0.1:{port}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| e.to_string())?,
            );
            let base = format!("http://127.0.0.1:{port}");
            wait_ready(&base)?;
            let files = &photos[..batch];
            let megabytes = files.iter().map(|p| file_len(p)).sum::<u64>() as f64 / 1e6;
            let mut times = Vec::new();
            for round in 0..ROUNDS {
                let avatar = create_avatar(&base, &key, &format!("bench-{batch}-{round}-{build}"))?;
                let started = Instant::now();
                upload(&base, &key, &avatar, files)?;
                times.push(started.elapsed().as_secs_f64());
            }
            let peak_mb = peak_rss_kb(server.0.id()).unwrap_or(0) as f64 / 1024.0;
            server.stop();
            times.sort_by(f64::total_cmp);
            println!(
                "{:>6} {:>8.1} {:>10.3} {:>10.3} {:>12.1} {:>14.1}  {build}",
                batch,
                megabytes,
                times[0],
                times[times.len() / 2],
                megabytes / times[0],
                peak_mb
            );
        }
    }
    println!();
    cluster.stop().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Builds the release `avatars` binary and returns its path.
pub(crate) fn release_binary(root: &Path) -> Result<PathBuf, String> {
    eprintln!("bench: building the release binary");
    let status = crate::cargo()
        .current_dir(root)
        .args(["build", "--release", "-q", "-p", "api", "--bin", "avatars"])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("release build failed".into());
    }
    Ok(crate::target_dir(root).join("release/avatars"))
}

pub(crate) struct ServerGuard(pub(crate) Child);

impl ServerGuard {
    /// Stops the server with SIGTERM and waits for it; a no-op once it has exited.
    pub(crate) fn stop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn check(
    output: std::io::Result<std::process::Output>,
    what: &str,
) -> Result<std::process::Output, String> {
    let output = output.map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

pub(crate) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

pub(crate) fn curl(args: &[&str]) -> Result<String, String> {
    let output = check(
        Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            .args(args)
            .output(),
        "curl",
    )?;
    Ok(String::from_utf8_lossy(&output.stdout).to_string())
}

pub(crate) fn wait_ready(base: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if curl(&[&format!("{base}/readyz")]).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("the service did not become ready".into())
}

pub(crate) fn create_avatar(base: &str, key: &str, name: &str) -> Result<String, String> {
    let body = curl(&[
        "-H",
        &format!("authorization: Bearer {key}"),
        "-H",
        "content-type: application/json",
        "-d",
        &format!("{{\"name\":\"{name}\",\"kind\":\"character\"}}"),
        &format!("{base}/avatars"),
    ])?;
    body.split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string)
        .ok_or_else(|| format!("no avatar id in {body}"))
}

fn upload(base: &str, key: &str, avatar: &str, files: &[PathBuf]) -> Result<(), String> {
    let auth = format!("authorization: Bearer {key}");
    let url = format!("{base}/avatars/{avatar}/photos");
    let parts: Vec<String> = files
        .iter()
        .map(|p| format!("files=@{}", p.display()))
        .collect();
    let mut args: Vec<&str> = vec!["-H", &auth];
    for part in &parts {
        args.push("-F");
        args.push(part);
    }
    args.push(&url);
    let body = curl(&args)?;
    let accepted = body.matches("\"sha256\"").count();
    if accepted != files.len() {
        return Err(format!("expected {} accepted photos: {body}", files.len()));
    }
    Ok(())
}

pub(crate) fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Distinct photo-like JPEGs of about 5 MB: smooth gradients under fine sensor-like noise, with
/// a real face (one of the test portraits, enlarged) in the middle, so face detection does the
/// work it does on a real upload.
pub(crate) fn generate_photos(
    root: &Path,
    dir: &Path,
    count: usize,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let faces = (1..=12)
        .map(|i| {
            let path = root.join(format!("tests/fixtures/faces/portrait-{i:02}.jpg"));
            image::open(&path)
                .map(|face| {
                    image::imageops::resize(
                        &face.to_rgb8(),
                        1200,
                        1200,
                        image::imageops::FilterType::Triangle,
                    )
                })
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    (0..count)
        .map(|i| {
            let path = dir.join(format!("photo-{i:02}.jpg"));
            let mut state = 0x2545F4914F6CDD1Du64 ^ (i as u64 + 1);
            let mut noise = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 48) as u8
            };
            let (width, height) = (3000u32, 2000u32);
            let face = &faces[i % faces.len()];
            let (fx, fy) = ((width - face.width()) / 2, (height - face.height()) / 2);
            let image = image::RgbImage::from_fn(width, height, |x, y| {
                let [r, g, b] = if (fx..fx + face.width()).contains(&x)
                    && (fy..fy + face.height()).contains(&y)
                {
                    face.get_pixel(x - fx, y - fy).0
                } else {
                    [
                        ((x + i as u32 * 97) * 255 / width) as u8,
                        ((y + i as u32 * 53) * 255 / height) as u8,
                        (((x + y) / 16 + i as u32 * 31) % 256) as u8,
                    ]
                };
                image::Rgb([
                    r.saturating_add(noise()),
                    g.saturating_add(noise()),
                    b.saturating_add(noise()),
                ])
            });
            let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
            let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(
                std::io::BufWriter::new(file),
                92,
            );
            encoder.encode_image(&image).map_err(|e| e.to_string())?;
            Ok(path)
        })
        .collect()
}
