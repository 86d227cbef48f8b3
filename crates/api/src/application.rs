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
        .context("building the URL fetchers")?;
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

    /// Serves and runs the workers until `shutdown` completes; then event streams end,
    /// in-flight requests finish and the workers stop.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let workers = service::workers::spawn(self.state.service.clone());
        let streams = self.state.service.clone();
        let limits = self.state.settings.http;
        let router = crate::router(self.state);
        let served = crate::serve(self.listener, router, limits, async move {
            shutdown.await;
            streams.close_event_streams();
        })
        .await;
        drop(workers);
        served
    }
}

/// The blob store named by `STORAGE_URL`, or a local directory.
pub fn blob_store(
    config: &service::Config,
    default_dir: &std::path::Path,
) -> anyhow::Result<store::BlobStore> {
    let blobs = match &config.storage_url {
        Some(url) => store::BlobStore::from_url(url).map_err(|e| service::ConfigError {
            variable: "STORAGE_URL",
            problem: e.to_string(),
        })?,
        None => store::BlobStore::local(default_dir)
            .with_context(|| format!("creating the blob directory {}", default_dir.display()))?,
    };
    tracing::info!(location = blobs.description(), "blob storage");
    Ok(blobs)
}
