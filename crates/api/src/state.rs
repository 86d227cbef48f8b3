use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{FetchSettings, HttpLimits, PhotoSettings};
use crate::metrics::HttpMetrics;

/// Settings the handlers need, from the configuration.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub http: HttpLimits,
    pub photos: PhotoSettings,
    pub fetch: FetchSettings,
    pub events: crate::config::EventSettings,
    /// Where uploads and fetched files are spooled while they are checked.
    pub scratch_dir: PathBuf,
}

impl ServiceSettings {
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            http: config.http,
            photos: config.photos,
            fetch: config.fetch.clone(),
            events: config.events,
            scratch_dir: std::env::temp_dir(),
        }
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            http: HttpLimits::default(),
            photos: PhotoSettings::default(),
            fetch: FetchSettings::default(),
            events: crate::config::EventSettings::default(),
            scratch_dir: std::env::temp_dir(),
        }
    }
}

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    pub blobs: store::BlobStore,
    pub metrics: Arc<HttpMetrics>,
    pub settings: Arc<ServiceSettings>,
    /// Fetches photos from callers' storage (photo-sized bodies).
    pub photo_fetcher: Arc<safe_fetch::SafeFetcher>,
    /// Fetches bring-your-own training archives (archive-sized bodies).
    pub archive_fetcher: Arc<safe_fetch::SafeFetcher>,
    /// The connection to fal; `None` when not configured (trainings are then refused).
    pub fal: Option<crate::fal_runtime::FalRuntime>,
    pub training: Arc<crate::training::TrainingSettings>,
    /// Wakes the workers when new work was stored.
    pub work: Arc<tokio::sync::Notify>,
    /// This process's identity in job leases.
    pub worker_id: uuid::Uuid,
    /// Announces generations with a newly finished item (from this process, and from others
    /// through Postgres NOTIFY), so `Prefer: wait` ends as soon as one completes.
    pub generation_events: tokio::sync::broadcast::Sender<uuid::Uuid>,
    /// Announces the highest sequenced event position (from any replica, through Postgres
    /// NOTIFY), waking event streams.
    pub sequenced_events: tokio::sync::broadcast::Sender<i64>,
    /// Wakes the webhook relay when deliveries may have fallen due.
    pub relay_wake: Arc<tokio::sync::Notify>,
    /// Delivers webhooks: never follows redirects, bounded by the delivery timeout.
    pub webhook_fetcher: Arc<safe_fetch::SafeFetcher>,
    /// Set on shutdown: event streams end, so draining connections does not wait for them.
    streams_closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    pub fn new(
        store: store::Store,
        blobs: store::BlobStore,
        settings: ServiceSettings,
    ) -> Result<Self, safe_fetch::FetchError> {
        let policy = |max_bytes: u64| safe_fetch::FetchPolicy {
            allow_http: settings.fetch.allow_http,
            allowed_private: settings.fetch.allowed_private.clone(),
            max_bytes,
            timeout: settings.fetch.timeout,
            ..safe_fetch::FetchPolicy::default()
        };
        let photo_fetcher = safe_fetch::SafeFetcher::new(policy(settings.photos.max_photo_bytes))?;
        let archive_fetcher =
            safe_fetch::SafeFetcher::new(policy(settings.fetch.max_archive_bytes))?;
        let webhook_fetcher = safe_fetch::SafeFetcher::new(safe_fetch::FetchPolicy {
            timeout: settings.events.delivery_timeout,
            connect_timeout: settings.events.delivery_timeout,
            max_redirects: 0,
            ..policy(64 * 1024)
        })?;
        Ok(Self {
            store,
            blobs,
            metrics: Arc::new(HttpMetrics::new()),
            settings: Arc::new(settings),
            photo_fetcher: Arc::new(photo_fetcher),
            archive_fetcher: Arc::new(archive_fetcher),
            fal: None,
            training: Arc::new(crate::training::TrainingSettings::default()),
            work: Arc::new(tokio::sync::Notify::new()),
            worker_id: uuid::Uuid::new_v4(),
            generation_events: tokio::sync::broadcast::channel(1024).0,
            sequenced_events: tokio::sync::broadcast::channel(1024).0,
            relay_wake: Arc::new(tokio::sync::Notify::new()),
            webhook_fetcher: Arc::new(webhook_fetcher),
            streams_closing: Arc::new(tokio::sync::watch::channel(false).0),
        })
    }

    /// Connects the state to fal with these training settings.
    pub fn with_fal(
        mut self,
        fal: Option<crate::fal_runtime::FalRuntime>,
        training: crate::training::TrainingSettings,
    ) -> Self {
        self.fal = fal;
        self.training = Arc::new(training);
        self
    }

    /// Ends every event stream of this process (they never end by themselves); clients
    /// reconnect elsewhere with `Last-Event-ID`.
    pub fn close_event_streams(&self) {
        self.streams_closing.send_replace(true);
    }

    pub fn closing_streams(&self) -> tokio::sync::watch::Receiver<bool> {
        self.streams_closing.subscribe()
    }

    pub fn photo_set_rules(&self) -> domain::PhotoSetRules {
        domain::PhotoSetRules {
            min_photos: self.settings.photos.min_photos,
            max_photos: self.settings.photos.max_photos,
        }
    }

    pub fn photo_rules(&self) -> media::PhotoRules {
        media::PhotoRules {
            max_bytes: self.settings.photos.max_photo_bytes,
            min_short_side: self.settings.photos.min_short_side,
            ..media::PhotoRules::default()
        }
    }
}
