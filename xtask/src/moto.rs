//! A real S3-compatible server for the tests and the local cluster: moto's standalone server
//! (PyPI `moto[server]`), with IAM authentication switched on, so requests must be signed with
//! an access key it issued and a bucket must exist before it is used.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The moto release the suite is run with (also installed by `.ci/run`).
pub const MOTO_REQUIREMENT: &str = "moto[server]==5.2.1";

/// Buckets created at start-up. Tests and the cluster share them, each under its own prefix.
pub const BUCKET: &str = "avatars-test";

/// A running moto server; stopped when dropped.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn present() -> bool {
    Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Finds `moto_server`, installing it from PyPI when running as root (as on CI); otherwise
/// says what to install.
pub fn ensure() -> Result<(), String> {
    if present() {
        return Ok(());
    }
    if nix::unistd::geteuid().is_root() {
        eprintln!("xtask: installing {MOTO_REQUIREMENT} (the S3-compatible server of the tests)");
        let ok = Command::new("python3")
            .args(["-m", "pip", "install", "-q", MOTO_REQUIREMENT])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok && present() {
            return Ok(());
        }
    }
    Err(format!(
        "the S3 tests need moto's server: `python3 -m pip install '{MOTO_REQUIREMENT}'`"
    ))
}

impl Moto {
    /// Starts moto on a free loopback port (its log in `log`), creates an IAM user with an
    /// access key allowed every S3 action and the [`BUCKET`], then turns authentication on.
    pub async fn start(log: &Path) -> Result<Self, String> {
        let port = crate::bench_photos::free_port()?;
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting moto_server: {e}"))?;
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key_id: String::new(),
            secret_access_key: String::new(),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = http
                .get(format!("{}/moto-api/data.json", moto.endpoint))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                break;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                return Err(format!(
                    "moto_server exited ({status}); see {}",
                    log.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moto_server did not answer within 30 s; see {}",
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Before authentication is on, moto routes a request by the service named in the
        // (unchecked) credential scope.
        let scope = |service: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/{service}/aws4_request, \
                 SignedHeaders=host, Signature=0"
            )
        };
        let iam = |form: Vec<(&'static str, String)>| {
            let http = http.clone();
            let endpoint = moto.endpoint.clone();
            let auth = scope("iam");
            async move {
                let mut form = form;
                form.push(("Version", "2010-05-08".into()));
                let response = http
                    .post(format!("{endpoint}/"))
                    .header("authorization", auth)
                    .form(&form)
                    .send()
                    .await
                    .map_err(|e| format!("moto IAM: {e}"))?;
                let status = response.status();
                let body = response.text().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("moto IAM answered {status}: {body}"));
                }
                Ok::<String, String>(body)
            }
        };
        iam(vec![
            ("Action", "CreateUser".into()),
            ("UserName", "avatars".into()),
        ])
        .await?;
        let key = iam(vec![
            ("Action", "CreateAccessKey".into()),
            ("UserName", "avatars".into()),
        ])
        .await?;
        let element = |name: &str| {
            key.split(&format!("<{name}>"))
                .nth(1)
                .and_then(|rest| rest.split(&format!("</{name}>")).next())
                .map(str::to_string)
                .ok_or_else(|| format!("no {name} in moto's answer: {key}"))
        };
        moto.access_key_id = element("AccessKeyId")?;
        moto.secret_access_key = element("SecretAccessKey")?;
        iam(vec![
            ("Action", "PutUserPolicy".into()),
            ("UserName", "avatars".into()),
            ("PolicyName", "s3".into()),
            (
                "PolicyDocument",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#
                    .into(),
            ),
        ])
        .await?;
        let created = http
            .put(format!("{}/{BUCKET}", moto.endpoint))
            .header("authorization", scope("s3"))
            .send()
            .await
            .map_err(|e| format!("moto create bucket: {e}"))?;
        if !created.status().is_success() {
            return Err(format!("moto create bucket answered {}", created.status()));
        }
        let auth_on = http
            .post(format!("{}/moto-api/reset-auth", moto.endpoint))
            .header("content-type", "text/plain")
            .body("0")
            .send()
            .await
            .map_err(|e| format!("moto reset-auth: {e}"))?;
        if !auth_on.status().is_success() {
            return Err(format!("moto reset-auth answered {}", auth_on.status()));
        }
        Ok(moto)
    }

    /// The environment `avatars serve` needs for `s3://BUCKET/prefix` on this server.
    pub fn service_env(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            ("STORAGE_URL".into(), format!("s3://{BUCKET}/{prefix}")),
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                self.secret_access_key.clone(),
            ),
            ("S3_ADDRESSING_STYLE".into(), "path".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }
}
