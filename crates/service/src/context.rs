//! The application's handles: database, blobs, fal, fetchers, settings, and the in-process
//! signals that wake workers and waiters. Every use case and worker takes a [`Service`].

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{
    Config, EventSettings, FetchSettings, HttpLimits, PhotoSettings, UnknownCallbackSettings,
};
use crate::fal_link::FalLink;
use crate::jobs::JobSettings;

/// The one settings tree, built from [`Config`]; defaults live in `Config` alone.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpLimits,
    pub photos: PhotoSettings,
    pub fetch: FetchSettings,
    pub events: EventSettings,
    pub jobs: JobSettings,
    pub workers: crate::workers::WorkerIntervals,
    pub unknown_callbacks: UnknownCallbackSettings,
    /// Where uploads and fetched files are spooled while they are checked.
    pub scratch_dir: PathBuf,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            http: config.http,
            photos: config.photos,
            fetch: config.fetch.clone(),
            events: config.events,
            jobs: JobSettings::from_config(config),
            workers: crate::workers::WorkerIntervals::default(),
            unknown_callbacks: config.unknown_callbacks,
            scratch_dir: std::env::temp_dir(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// What every use case and worker can reach. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub store: store::Store,
    pub blobs: store::BlobStore,
    pub settings: Arc<Settings>,
    /// Fetches photos from callers' storage (photo-sized bodies).
    pub photo_fetcher: Arc<safe_fetch::SafeFetcher>,
    /// Fetches bring-your-own training archives (archive-sized bodies).
    pub archive_fetcher: Arc<safe_fetch::SafeFetcher>,
    /// The connection to fal; `None` when not configured (trainings are then refused).
    pub fal: Option<FalLink>,
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
    /// Renders event bodies for the sequencer.
    pub event_bodies: crate::events::EventBodies,
    /// Set on shutdown: event streams end, so draining connections does not wait for them.
    streams_closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Service {
    pub fn new(
        store: store::Store,
        blobs: store::BlobStore,
        settings: Settings,
        fal: Option<FalLink>,
        event_bodies: crate::events::EventBodies,
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
            settings: Arc::new(settings),
            photo_fetcher: Arc::new(photo_fetcher),
            archive_fetcher: Arc::new(archive_fetcher),
            fal,
            work: Arc::new(tokio::sync::Notify::new()),
            worker_id: uuid::Uuid::new_v4(),
            generation_events: tokio::sync::broadcast::channel(1024).0,
            sequenced_events: tokio::sync::broadcast::channel(1024).0,
            relay_wake: Arc::new(tokio::sync::Notify::new()),
            webhook_fetcher: Arc::new(webhook_fetcher),
            event_bodies,
            streams_closing: Arc::new(tokio::sync::watch::channel(false).0),
        })
    }

    /// Ends every event stream of this process (they never end by themselves); clients
    /// reconnect elsewhere with `Last-Event-ID`.
    pub fn close_event_streams(&self) {
        self.streams_closing.send_replace(true);
    }

    pub fn closing_streams(&self) -> tokio::sync::watch::Receiver<bool> {
        self.streams_closing.subscribe()
    }

    /// The fal connection and the URL fal calls back, or why paid work cannot start.
    pub fn require_fal(&self) -> Result<(&FalLink, &str), crate::ServiceError> {
        match (&self.fal, self.settings.jobs.public_base_url.as_deref()) {
            (Some(fal), Some(base)) => Ok((fal, base)),
            _ => Err(crate::ServiceError::unavailable(
                "fal_not_configured",
                "this service has no fal connection (FAL_KEY and PUBLIC_BASE_URL); trainings and generations cannot start",
            )),
        }
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
