//! `avatars dev`: the whole service on one machine with nothing configured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use pgcluster::{Cluster, ClusterOptions};
use secrecy::{ExposeSecret, SecretString};

use service::{Config, Settings};

use crate::application::{Application, Resources};

const DEV_TENANT: &str = "dev";
const DEV_DATABASE: &str = "avatars";
/// fal-sim's pace in dev mode: a 20-minute training takes about 12 seconds.
const DEV_SIM_TIME_FACTOR: f64 = 0.01;

pub async fn run(config: Config, bind: SocketAddr, data_dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the dev data directory {}", data_dir.display()))?;

    // Dropping the cluster stops it, also when start-up fails below.
    let (database_url, mut cluster) = match &config.database_url {
        Some(url) => (url.expose_secret().to_string(), None),
        None => {
            let pg_dir = data_dir.join("postgres");
            let cluster =
                tokio::task::spawn_blocking(move || -> Result<Cluster, pgcluster::ClusterError> {
                    let cluster = Cluster::start(&pg_dir, &ClusterOptions::dev())?;
                    cluster.ensure_database(DEV_DATABASE)?;
                    Ok(cluster)
                })
                .await
                .context("starting PostgreSQL")??;
            tracing::info!(port = cluster.port(), "private PostgreSQL started");
            (cluster.url(DEV_DATABASE), Some(cluster))
        }
    };

    let store = store::Store::connect_lazy_with_settings(&database_url, &config.database)?;
    store.migrate().await.context("applying migrations")?;
    let key = dev_api_key(&store, &data_dir).await?;

    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind} (pass --bind to choose another address)"))?;
    let base = format!("http://{}", listener.local_addr()?);
    println!();
    println!("  avatars dev is running");
    println!("  base URL:    {base}");
    println!("  Swagger UI:  {base}/docs/");
    println!("  dev API key: {}", key.expose_secret());
    println!();
    println!(
        "  try: curl -H 'Authorization: Bearer {}' {base}/avatars",
        key.expose_secret()
    );
    let mut config = config;
    if config.secrets_keys.is_none() {
        config.secrets_keys = Some(dev_key_ring(&data_dir)?);
    }
    if config.public_base_url.is_none() {
        config.public_base_url = Some(base.clone());
    }
    // fal-sim stands in for fal unless a real key is configured.
    let (fal, sim) = match config.fal.key.clone() {
        Some(key) => (service::fal_link::FalLink::new(&config.fal, key)?, None),
        None => {
            let sim = fal_sim::FalSim::start(fal_sim::SimConfig {
                time_factor: DEV_SIM_TIME_FACTOR,
                ..fal_sim::SimConfig::default()
            })
            .await
            .context("starting the in-process fal simulator")?;
            config.fal.queue_url = sim.queue_url().to_string();
            config.fal.rest_url = sim.rest_url().to_string();
            config.fal.cdn_url = sim.cdn_url().to_string();
            config.fal.jwks_url = sim.jwks_url().to_string();
            let key = SecretString::from(sim.default_key().unwrap_or_default().to_string());
            println!(
                "  fal:         in-process fal-sim at {} (set FAL_KEY for fal.ai)",
                sim.queue_url()
            );
            (
                service::fal_link::FalLink::new(&config.fal, key)?,
                Some(sim),
            )
        }
    };
    println!();
    let resources = Resources {
        store: store.clone(),
        blobs: crate::application::blob_store(&config, Some(&data_dir.join("blobs")))?,
        fal: Some(fal),
        listener,
    };
    let mut settings = Settings::from_config(&config);
    // One process on a laptop: nothing to hand over to, so Ctrl-C stops at once.
    settings.shutdown.delay = std::time::Duration::ZERO;
    // A developer's receiver runs on the same laptop: allow it unless told otherwise.
    settings.events.allow_loopback = config.webhook_allow_loopback.unwrap_or(true);
    Application::build(settings, resources)?
        .run_until_stopped(crate::shutdown_signal())
        .await?;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }

    store.pool().close().await;
    if let Some(cluster) = cluster.as_mut() {
        tokio::task::block_in_place(|| cluster.stop()).context("stopping PostgreSQL")?;
        tracing::info!("private PostgreSQL stopped");
    }
    Ok(())
}

/// The dev key is kept in the data directory so it stays the same across restarts; a missing
/// or revoked one is replaced.
async fn dev_api_key(store: &store::Store, data_dir: &Path) -> anyhow::Result<SecretString> {
    let path = data_dir.join("dev-api-key");
    if let Ok(saved) = std::fs::read_to_string(&path) {
        let saved = saved.trim().to_string();
        let hash = crate::auth::hash_key(&saved);
        if store.authenticate_key(&hash).await?.is_some() {
            return Ok(SecretString::from(saved));
        }
    }
    let (_, key) = crate::auth::create_api_key(store, DEV_TENANT, "avatars dev").await?;
    write_private(&path, key.expose_secret())
        .with_context(|| format!("saving the dev key to {}", path.display()))?;
    Ok(key)
}

/// Without SECRETS_KEYS, dev seals secrets under a ring kept in the data directory, made on
/// first start, so what it sealed still opens after a restart.
fn dev_key_ring(data_dir: &Path) -> anyhow::Result<std::sync::Arc<service::secrets::KeyRing>> {
    let path = data_dir.join("secrets-keys");
    let ring = match std::fs::read_to_string(&path) {
        Ok(saved) => service::secrets::KeyRing::parse(saved.trim())
            .with_context(|| format!("reading the dev key ring {}", path.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let (ring, text) = service::secrets::KeyRing::generate("dev");
            write_private(&path, text.expose_secret())
                .with_context(|| format!("saving the dev key ring to {}", path.display()))?;
            ring
        }
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", path.display()));
        }
    };
    Ok(std::sync::Arc::new(ring))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}
