//! One start-up for every way the service runs: `avatars serve`, `avatars dev` and the
//! black-box tests build an [`Application`] the same way and run it until told to stop.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use service::fal_link::FalLink;
use service::{Service, Settings};
use tokio::net::TcpListener;

use crate::state::AppState;

/// What the application runs on, besides its settings.
pub struct Resources {
    pub store: store::Store,
    pub blobs: store::BlobStore,
    /// The connection to fal; `None` refuses trainings and generations.
    pub fal: Option<FalLink>,
    pub listener: TcpListener,
}

/// A built service, bound to its port, not yet serving.
pub struct Application {
    state: AppState,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Application {
    pub fn build(settings: Settings, resources: Resources) -> anyhow::Result<Self> {
        let local_addr = resources
            .listener
            .local_addr()
            .context("reading the bound address")?;
        let service = Service::new(
            resources.store,
            resources.blobs,
            settings,
            resources.fal,
            crate::event_bodies::render,
        )
        .context("building the application layer")?;
        Ok(Self {
            state: AppState::new(service),
            listener: resources.listener,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn service(&self) -> &Service {
        &self.state.service
    }

    /// Serves and runs the workers until `shutdown` completes. Then it hands over: readiness
    /// turns false and event streams end at once; after `SHUTDOWN_DELAY` the listener closes
    /// and in-flight requests finish; the job workers finish the job in hand and every lease
    /// is handed back.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let service = self.state.service.clone();
        let workers = service::workers::spawn(service.clone());
        let limits = self.state.settings.http;
        let router = crate::router(self.state);
        let stopping = service.clone();
        let served = crate::serve(self.listener, router, limits, async move {
            shutdown.await;
            stopping.begin_stopping();
            tracing::info!("stopping: not ready; the listener closes after SHUTDOWN_DELAY");
            tokio::time::sleep(stopping.settings.shutdown.delay).await;
        })
        .await;
        workers.stop(service.settings.shutdown.worker_grace).await;
        tracing::info!("stopped");
        served
    }
}

/// The blob store named by `STORAGE_URL`, or (dev mode only) a local directory. Without a
/// default the variable is required: replicas must share one store, and a local directory
/// silently would not be shared.
pub fn blob_store(
    config: &service::Config,
    default_dir: Option<&std::path::Path>,
) -> anyhow::Result<store::BlobStore> {
    let blobs = match (&config.storage_url, default_dir) {
        (Some(url), _) => {
            store::BlobStore::from_url(url, &config.s3).map_err(|e| service::ConfigError {
                variable: "STORAGE_URL",
                problem: e.to_string(),
            })?
        }
        (None, Some(dir)) => store::BlobStore::local(dir)
            .with_context(|| format!("creating the blob directory {}", dir.display()))?,
        (None, None) => {
            return Err(service::ConfigError {
                variable: "STORAGE_URL",
                problem: "required for `avatars serve`: every replica must use the same store \
                    (s3://bucket[/prefix], or a directory all replicas share)"
                    .into(),
            }
            .into())
        }
    };
    tracing::info!(location = blobs.description(), "blob storage");
    Ok(blobs)
}
