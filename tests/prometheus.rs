//! A real Prometheus server (Debian's `prometheus` package) scrapes the running service with
//! the project's alert rules loaded, and answers queries about our metrics. The dashboard and
//! the rules name only metrics the service serves.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use blackbox::scrape::Scrape;
use blackbox::{FalOptions, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(60);

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join(path)
}

/// A Prometheus server in its own process group with its own storage; stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (`host:port`) every second and evaluates the rules as often.
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let rules = deploy("prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: avatars\n    static_configs:\n      - targets: ['{target}']\n",
            rules = rules.display(),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the config");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (install Debian's prometheus package)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    async fn api(&self, client: &reqwest::Client, path: &str, query: &[(&str, &str)]) -> Value {
        let response = client
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await;
        match response {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// The value of the instant query's only series, once it has one.
    async fn value(&self, client: &reqwest::Client, query: &str) -> Option<f64> {
        let answer = self.api(client, "/api/v1/query", &[("query", query)]).await;
        let result = answer["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-(self.child.id() as i32)),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_real_prometheus_scrapes_the_service_and_evaluates_the_rules(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    // Two callbacks whose signatures do not verify.
    for _ in 0..2 {
        let response = app
            .client
            .post(app.url("/webhooks/fal"))
            .header("x-fal-webhook-request-id", "r-1")
            .header("x-fal-webhook-user-id", "u")
            .header(
                "x-fal-webhook-timestamp",
                chrono::Utc::now().timestamp().to_string(),
            )
            .header("x-fal-webhook-signature", "00".repeat(64))
            .body(json!({"request_id": "r-1", "status": "OK", "payload": {}}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }

    let prometheus = Prometheus::start(&app.addr.to_string());
    let client = reqwest::Client::new();
    let query = r#"avatars_fal_callbacks_total{job="avatars",outcome="bad_signature"}"#;
    let seen = blackbox::wait_until(DEADLINE, || async {
        prometheus.value(&client, query).await == Some(2.0)
    })
    .await;
    assert!(
        seen,
        "Prometheus never reported {query} = 2; it answers {:?}",
        prometheus.value(&client, query).await
    );
    // The target is healthy and the fixed series are there at zero.
    assert_eq!(
        prometheus.value(&client, r#"up{job="avatars"}"#).await,
        Some(1.0)
    );
    assert_eq!(
        prometheus
            .value(
                &client,
                r#"avatars_jobs{kind="training",status="in_progress"}"#
            )
            .await,
        Some(0.0)
    );

    // Every alert rule is loaded and evaluates against the real series without error.
    let defined = std::fs::read_to_string(deploy("prometheus/alerts.yml"))
        .unwrap()
        .lines()
        .filter(|line| line.trim_start().starts_with("- alert:"))
        .count();
    assert!(defined >= 10, "{defined} alert rules");
    let rules_ok = blackbox::wait_until(DEADLINE, || async {
        let answer = prometheus.api(&client, "/api/v1/rules", &[]).await;
        let rules: Vec<&Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        rules.len() == defined
            && rules
                .iter()
                .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z")
    })
    .await;
    assert!(
        rules_ok,
        "{:#}",
        prometheus.api(&client, "/api/v1/rules", &[]).await
    );
}

/// The metric names in a PromQL text (or any text): `avatars_...` and `http_...` tokens.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &text[i..];
        if starts_word && (rest.starts_with("avatars_") || rest.starts_with("http_request")) {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Whether a scrape serves `name`: as a sample, or as a family (which may have no sample yet:
/// a counter whose labels appear on first use) that `name` is a sample of.
fn served(scrape: &Scrape, name: &str) -> bool {
    let family = ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    scrape.samples.iter().any(|s| s.name == name) || scrape.has_family(family)
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_dashboard_and_the_alerts_use_metrics_the_service_serves(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    // One request so the HTTP histogram has samples.
    app.client.get(app.url("/healthz")).send().await.unwrap();
    let scrape = app.scrape().await;

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/avatars.json")).unwrap())
            .expect("the dashboard is JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let mut checked = 0;
    for (origin, text) in exprs
        .iter()
        .map(|e| ("dashboard", e.to_string()))
        .chain([("alerts.yml", rules)])
    {
        for name in metric_names(&text) {
            assert!(
                served(&scrape, &name),
                "{origin} uses {name}, which /metrics does not serve"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "{checked}");
}
