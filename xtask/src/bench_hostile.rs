//! `cargo xtask bench-hostile`: the service's peak memory under hostile uploads.
//!
//! For each hostile case a fresh release `avatars serve` (so its peak resident memory, VmHWM,
//! belongs to that case alone) receives the hostile requests from one tenant while another
//! tenant uploads five ordinary ~5 MB photos at the same time. Prints, per case, what the
//! hostile requests were answered, whether the other tenant's upload succeeded and how long it
//! took, and the process's peak memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use pgcluster::{Cluster, ClusterOptions};

use crate::bench_photos::{
    check, create_avatar, free_port, generate_photos, peak_rss_kb, release_binary, wait_ready,
    ServerGuard,
};

/// Hostile requests sent at once in each case.
const HOSTILE_REQUESTS: usize = 2;

struct Case {
    name: &'static str,
    /// One multipart body per hostile request.
    bodies: Vec<PathBuf>,
}

/// Runs every case, or only those whose name contains `only`.
pub fn run(root: &Path, only: Option<String>) -> Result<(), String> {
    let wanted = |name: &str| only.as_deref().is_none_or(|only| name.contains(only));
    let binary = release_binary(root)?;
    let work = root.join("target/bench-hostile");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;

    eprintln!("bench: generating the files");
    let normal = generate_photos(root, &work.join("normal"), 5)?;
    let cases = generate_cases(&work.join("hostile"), &wanted)?;

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
            .env("RUST_LOG", "error");
    };
    let mut migrate = Command::new(&binary);
    env(&mut migrate);
    check(migrate.arg("migrate").output(), "avatars migrate")?;
    let key_for = |tenant: &str| -> Result<String, String> {
        let mut create_key = Command::new(&binary);
        env(&mut create_key);
        let output = check(
            create_key
                .args(["api-keys", "create", "--tenant", tenant])
                .output(),
            "avatars api-keys create",
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let hostile_key = key_for("hostile")?;
    let normal_key = key_for("normal")?;

    println!();
    println!(
        "hostile uploads ({HOSTILE_REQUESTS} requests at once per case) while another tenant \
         uploads 5 photos; release build, default limits"
    );
    println!(
        "{:<34} {:>10} {:<26} {:<22} {:>9} {:>13}",
        "case", "body MB", "hostile answers", "other tenant", "other s", "peak RSS MB"
    );
    let mut cases_run = vec![Case {
        name: "none (the other tenant alone)",
        bodies: Vec::new(),
    }];
    cases_run.extend(cases);
    for case in &cases_run {
        let port = free_port()?;
        let mut serve = Command::new(&binary);
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
        let hostile: Vec<_> = case
            .bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let avatar = create_avatar(&base, &hostile_key, &format!("h-{}-{i}", case.name))?;
                Ok((avatar, body.clone()))
            })
            .collect::<Result<_, String>>()?;
        let normal_avatar = create_avatar(&base, &normal_key, "normal")?;

        let answers = std::thread::scope(|scope| {
            let hostile: Vec<_> = hostile
                .iter()
                .map(|(avatar, body)| {
                    let (base, key) = (&base, &hostile_key);
                    scope.spawn(move || post_body(base, key, avatar, body))
                })
                .collect();
            let started = Instant::now();
            let other = post_files(&base, &normal_key, &normal_avatar, &normal);
            let other_seconds = started.elapsed().as_secs_f64();
            let hostile: Vec<String> = hostile
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| "panicked".into()))
                .collect();
            (hostile, other, other_seconds)
        });
        let (hostile, other, other_seconds) = answers;
        let peak_mb = peak_rss_kb(server.0.id()).unwrap_or(0) as f64 / 1024.0;
        server.stop();
        let body_mb = case
            .bodies
            .first()
            .map_or(0.0, |b| crate::bench_photos::file_len(b) as f64 / 1e6);
        println!(
            "{:<34} {:>10.2} {:<26} {:<22} {:>9.2} {:>13.1}",
            case.name,
            body_mb,
            if hostile.is_empty() {
                "-".to_string()
            } else {
                hostile.join(" ")
            },
            other,
            other_seconds,
            peak_mb
        );
    }
    println!();
    cluster.stop().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Sends a prepared multipart body; returns the status and the problem code, if any.
fn post_body(base: &str, key: &str, avatar: &str, body: &Path) -> String {
    let output = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", &format!("authorization: Bearer {key}")])
        .args(["-H", "content-type: multipart/form-data; boundary=hostile"])
        .args(["--data-binary", &format!("@{}", body.display())])
        .arg(format!("{base}/avatars/{avatar}/photos"))
        .output();
    let Ok(output) = output else {
        return "curl failed".into();
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let (response, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let accepted = response.matches("\"sha256\"").count();
    let code = serde_json::from_str::<serde_json::Value>(response)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string));
    match code {
        Some(code) => format!("{status}:{code}"),
        None if status == "201" => format!("201:{accepted}ok"),
        None => status.to_string(),
    }
}

/// The other tenant's ordinary upload; "201, 5 accepted" when it went through.
fn post_files(base: &str, key: &str, avatar: &str, files: &[PathBuf]) -> String {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", &format!("authorization: Bearer {key}")]);
    for file in files {
        command.args(["-F", &format!("files=@{}", file.display())]);
    }
    let Ok(output) = command
        .arg(format!("{base}/avatars/{avatar}/photos"))
        .output()
    else {
        return "curl failed".into();
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let (response, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let accepted = response.matches("\"sha256\"").count();
    format!("{status}, {accepted} accepted")
}

fn generate_cases(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<Case>, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut cases = Vec::new();
    let mut case = |name: &'static str, files: &dyn Fn() -> Result<Vec<Vec<u8>>, String>| {
        if wanted(name) {
            let files = files()?;
            cases.push(Case {
                name,
                bodies: bodies(dir, name, |_| files.clone())?,
            });
        }
        Ok::<(), String>(())
    };

    // 8-bit RGB at the largest accepted size, nearly all zeros: ~150 MB decoded each.
    case("decompression-bomb PNGs (5 each)", &|| {
        (0..5)
            .map(|i| png_file(7071, 7071, png::BitDepth::Eight, i))
            .collect()
    })?;
    // 16-bit RGB at the largest accepted size: 300 MB decoded each.
    case("16-bit giant PNGs (3 each)", &|| {
        (0..3)
            .map(|i| png_file(7071, 7071, png::BitDepth::Sixteen, 100 + i))
            .collect()
    })?;
    case("10,000 empty parts", &|| Ok(vec![Vec::new(); 10_000]))?;
    case("1,000 small files", &|| {
        crate::bench_support::small_jpegs(1000)
    })?;
    Ok(cases)
}

/// Writes one multipart body per hostile request.
fn bodies(
    dir: &Path,
    name: &str,
    files: impl Fn(usize) -> Vec<Vec<u8>>,
) -> Result<Vec<PathBuf>, String> {
    (0..HOSTILE_REQUESTS)
        .map(|request| {
            let slug: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let path = dir.join(format!("{slug}-{request}.multipart"));
            let mut out =
                std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| e.to_string())?);
            for (i, file) in files(request).iter().enumerate() {
                write!(
                    out,
                    "--hostile\r\nContent-Disposition: form-data; name=\"files\"; \
                     filename=\"f{i}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .map_err(|e| e.to_string())?;
                out.write_all(file).map_err(|e| e.to_string())?;
                out.write_all(b"\r\n").map_err(|e| e.to_string())?;
            }
            out.write_all(b"--hostile--\r\n")
                .map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
            Ok(path)
        })
        .collect()
}

/// A zero-filled RGB PNG, made distinct by `seed` in its first row, streamed row by row.
fn png_file(width: u32, height: u32, depth: png::BitDepth, seed: u8) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(depth);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    let mut stream = writer.stream_writer().map_err(|e| e.to_string())?;
    let bytes_per_sample = if depth == png::BitDepth::Sixteen {
        2
    } else {
        1
    };
    let mut row = vec![0u8; width as usize * 3 * bytes_per_sample];
    for y in 0..height {
        row[0] = if y == 0 { seed } else { 0 };
        stream.write_all(&row).map_err(|e| e.to_string())?;
    }
    stream.finish().map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}
