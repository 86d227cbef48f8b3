//! The `avatars` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use service::{Config, ConfigError, Settings};

use crate::application::{Application, Resources};

#[derive(Debug, Parser)]
#[command(
    name = "avatars",
    version,
    about = "Trains personal FLUX avatars on fal.ai and generates images with them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service, configured from the environment (production).
    Serve {
        /// Apply pending database migrations before serving.
        #[arg(long)]
        migrate: bool,
    },
    /// Run the whole service locally with embedded defaults: a private PostgreSQL (unless
    /// DATABASE_URL is set), a dev tenant and API key.
    Dev {
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        /// Where dev data lives (database cluster, dev key); kept across restarts.
        #[arg(long, default_value = ".avatars-dev")]
        data_dir: PathBuf,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage the API keys callers authenticate with.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
    /// Manage secrets at rest (webhook signing secrets sealed under SECRETS_KEYS).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Debug, Subcommand)]
enum ApiKeysCommand {
    /// Create a key for a tenant (created when new). The key is printed once, here only.
    Create {
        /// Tenant name (the calling service), e.g. `telegram-bot`.
        #[arg(long)]
        tenant: String,
        /// A note to tell keys apart.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List keys (never the keys themselves).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id; requests with it are refused from then on.
    Revoke { id: uuid::Uuid },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Rewrite every webhook signing secret not sealed under the primary (first) key of
    /// SECRETS_KEYS: after a new key was put first, and to seal secrets stored before sealing.
    /// Safe to repeat and to run while the service serves.
    Reencrypt {
        /// Rows rewritten per transaction.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch: u32,
    },
    /// Count the signing secrets sealed under each key id (never the secrets).
    Status,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        print!("{}", crate::openapi_json());
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let traces = match crate::telemetry::Traces::new(&config.traces) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("invalid configuration: OTEL_EXPORTER_OTLP_ENDPOINT: {error}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(
        config.log_format,
        traces.as_ref(),
        config.http.server_timing,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command, config));
    // Tasks still held by the runtime end their spans as it drops; then the spans not yet
    // exported go out before the process ends.
    drop(runtime);
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(config_error) = error.downcast_ref::<ConfigError>() {
                eprintln!("{config_error}");
                return ExitCode::from(2);
            }
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The key ring of `avatars serve` and `avatars secrets`: without it, secrets could be neither
/// sealed nor opened.
fn require_key_ring(
    config: &Config,
    command: &str,
) -> Result<std::sync::Arc<service::secrets::KeyRing>, ConfigError> {
    config.secrets_keys.clone().ok_or_else(|| ConfigError {
        variable: "SECRETS_KEYS",
        problem: format!(
            "required for `avatars {command}`: the keys that seal webhook signing secrets and \
             derive fal callback tokens, as `id:base64key,...` (the first one primary; make a \
             key with `openssl rand -base64 32`)"
        ),
    })
}

fn require_database(config: &Config, command: &str) -> Result<store::Store, anyhow::Error> {
    let url = config.database_url.as_ref().ok_or_else(|| ConfigError {
        variable: "DATABASE_URL",
        problem: format!("required for `avatars {command}` (e.g. postgres://user@host/avatars)"),
    })?;
    store::Store::connect_lazy_with_settings(url.expose_secret(), &config.database).map_err(|_| {
        ConfigError {
            variable: "DATABASE_URL",
            problem: "expected a postgres:// URL".into(),
        }
        .into()
    })
}

/// The fal connection of `avatars serve`: required key and public URL.
fn production_fal(config: &Config) -> anyhow::Result<Option<service::fal_link::FalLink>> {
    let Some(key) = config.fal.key.clone() else {
        tracing::warn!("FAL_KEY is not set: trainings and generations will be refused");
        return Ok(None);
    };
    if config.public_base_url.is_none() {
        return Err(ConfigError {
            variable: "PUBLIC_BASE_URL",
            problem: "required with FAL_KEY: fal calls the service back at this URL".into(),
        }
        .into());
    }
    service::fal_link::FalLink::new(&config.fal, key)
        .map(Some)
        .map_err(|e| {
            ConfigError {
                variable: e.variable,
                problem: e.problem,
            }
            .into()
        })
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Openapi => unreachable!("handled before configuration"),
        Command::Dev { bind, data_dir } => crate::dev::run(config, bind, data_dir).await,
        Command::Migrate => {
            let store = require_database(&config, "migrate")?;
            store.migrate().await.context("applying migrations")?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Serve { migrate } => {
            let store = require_database(&config, "serve")?;
            require_key_ring(&config, "serve")?;
            if migrate {
                store.migrate().await.context("applying migrations")?;
                tracing::info!("migrations applied");
            }
            let listener = tokio::net::TcpListener::bind(config.bind_addr)
                .await
                .with_context(|| format!("binding {}", config.bind_addr))?;
            tracing::info!(addr = %config.bind_addr, "serving");
            let resources = Resources {
                store: store.clone(),
                blobs: crate::application::blob_store(&config, None)?,
                fal: production_fal(&config)?,
                listener,
            };
            Application::build(Settings::from_config(&config), resources)?
                .run_until_stopped(crate::shutdown_signal())
                .await?;
            store.pool().close().await;
            Ok(())
        }
        Command::ApiKeys(command) => {
            let store = require_database(&config, "api-keys")?;
            api_keys(&store, command).await
        }
        Command::Secrets(command) => {
            let store = require_database(&config, "secrets")?;
            let ring = require_key_ring(&config, "secrets")?;
            secrets(&store, &ring, command).await
        }
    }
}

async fn secrets(
    store: &store::Store,
    ring: &service::secrets::KeyRing,
    command: SecretsCommand,
) -> anyhow::Result<()> {
    let mut unreadable = 0;
    if let SecretsCommand::Reencrypt { batch } = command {
        let report = service::secrets::reencrypt(store, ring, batch)
            .await
            .context("re-encrypting the signing secrets")?;
        eprintln!(
            "resealed {} signing secrets under key {:?}",
            report.resealed,
            ring.primary_id()
        );
        unreadable = report.unreadable;
    }
    println!("{:<32}  secrets", "key id");
    for (key_id, count) in store
        .secrets_by_key()
        .await
        .context("counting the signing secrets")?
    {
        let label = match key_id.as_deref() {
            None => "(not sealed)".to_string(),
            Some(id) if ring.key_ids().contains(&id) => id.to_string(),
            Some(id) => format!("{id} (not in SECRETS_KEYS)"),
        };
        println!("{label:<32}  {count}");
    }
    anyhow::ensure!(
        unreadable == 0,
        "{unreadable} signing secrets do not open with the keys in SECRETS_KEYS (their key ids \
         are listed above); add the key they were sealed under and run again"
    );
    Ok(())
}

async fn api_keys(store: &store::Store, command: ApiKeysCommand) -> anyhow::Result<()> {
    match command {
        ApiKeysCommand::Create { tenant, label } => {
            let tenant = tenant.trim();
            anyhow::ensure!(
                !tenant.is_empty() && tenant.chars().count() <= 100,
                "--tenant must be 1 to 100 characters"
            );
            let (id, key) = crate::auth::create_api_key(store, tenant, &label)
                .await
                .context("creating the key")?;
            eprintln!("created key {id} for tenant {tenant:?}; it is shown only now:");
            println!("{}", key.expose_secret());
        }
        ApiKeysCommand::List { tenant } => {
            let keys = store
                .list_api_keys(tenant.as_deref())
                .await
                .context("listing keys")?;
            println!(
                "{:<36}  {:<20}  {:<12}  {:<20}  {:<20}  label",
                "id", "tenant", "prefix", "created", "revoked"
            );
            for key in keys {
                println!(
                    "{:<36}  {:<20}  {:<12}  {:<20}  {:<20}  {}",
                    key.id,
                    key.tenant_name,
                    key.prefix,
                    key.created_at.format("%Y-%m-%d %H:%M:%S"),
                    key.revoked_at
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "-".into()),
                    key.label
                );
            }
        }
        ApiKeysCommand::Revoke { id } => match store.revoke_api_key(domain::ApiKeyId(id)).await {
            Ok(()) => eprintln!("revoked key {id}"),
            Err(store::StoreError::NotFound) => anyhow::bail!("no key with id {id}"),
            Err(error) => return Err(error).context("revoking the key"),
        },
    }
    Ok(())
}
