//! The application's handles: database, blobs, fal, fetchers, settings, and the in-process
//! signals that wake workers and waiters. Every use case and worker takes a [`Service`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    Config, EventSettings, FetchSettings, HttpLimits, PhotoSettings, RetentionSettings,
    TenantLimits, UnknownCallbackSettings,
};
use crate::fal_link::FalLink;

/// The one settings tree, built from [`Config`]; defaults live in `Config` alone.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpLimits,
    pub photos: PhotoSettings,
    pub fetch: FetchSettings,
    pub events: EventSettings,
    pub tenants: TenantLimits,
    /// The cache of live API keys this process keeps.
    pub api_key_cache: store::KeyCacheSettings,
    pub jobs: JobSettings,
    pub workers: WorkerIntervals,
    pub shutdown: crate::config::ShutdownSettings,
    pub unknown_callbacks: UnknownCallbackSettings,
    pub callback_batches: crate::config::CallbackBatchSettings,
    /// Callbacks from another fal user are refused (`FAL_WEBHOOK_USER_ID`).
    pub fal_webhook_user_id: Option<String>,
    pub retention: RetentionSettings,
    /// Where uploads and fetched files are spooled while they are checked.
    pub scratch_dir: PathBuf,
    /// Seals webhook signing secrets and derives fal callback tokens.
    pub secrets: Arc<crate::secrets::KeyRing>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            http: config.http,
            photos: config.photos,
            fetch: config.fetch.clone(),
            events: EventSettings {
                // `avatars serve` keeps refusing loopback receivers unless told otherwise;
                // `avatars dev` changes this default.
                allow_loopback: config.webhook_allow_loopback.unwrap_or(false),
                ..config.events
            },
            tenants: config.tenants,
            api_key_cache: config.api_key_cache,
            jobs: JobSettings::from_config(config),
            workers: WorkerIntervals {
                janitor: config.janitor_interval,
                ..WorkerIntervals::default()
            },
            shutdown: config.shutdown,
            unknown_callbacks: config.unknown_callbacks,
            callback_batches: config.callback_batches,
            fal_webhook_user_id: config.fal.webhook_user_id.clone(),
            retention: config.retention,
            scratch_dir: std::env::temp_dir(),
            // Without SECRETS_KEYS (tests; `avatars serve` refuses to start and `avatars dev`
            // keeps a ring in its data directory), a random key that lives as long as the
            // process: what it sealed is unreadable after a restart.
            secrets: config
                .secrets_keys
                .clone()
                .unwrap_or_else(|| Arc::new(crate::secrets::KeyRing::generate("ephemeral").0)),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// How jobs (trainings and generations) behave, from the configuration.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub selection: domain::TrainerSelection,
    pub portrait_defaults: domain::PortraitDefaults,
    pub prices: domain::TrainingPrices,
    pub timeout: Duration,
    pub status_check_interval: Duration,
    /// The longest gap between two safety-net status checks.
    pub status_check_max_interval: Duration,
    /// Added to a job's expected duration before its webhook counts as overdue.
    pub webhook_grace: Duration,
    /// A job's deadline: this many times its expected duration, plus the grace.
    pub deadline_factor: u32,
    /// How long a worker owns a job; longer than any single fal call it makes.
    pub lease: Duration,
    /// Where fal reaches this service (webhooks).
    pub public_base_url: Option<String>,
    /// Most prompts in one generation request (`GENERATION_MAX_PROMPTS`).
    pub generation_max_prompts: usize,
    /// A generation item's budget, from creation.
    pub generation_timeout: Duration,
    /// Custody attempts before a finished job fails `artifact_unavailable`.
    pub custody_max_attempts: u32,
    /// The first wait between custody attempts; it doubles, up to 64 times this.
    pub custody_retry_interval: Duration,
    /// Failed attempts at a cancel owed to fal before it ends unconfirmed.
    pub cancel_max_attempts: u32,
    /// The first wait between cancel attempts; it doubles, up to 64 times this.
    pub cancel_retry_interval: Duration,
    pub generation_prices: domain::GenerationPrices,
}

impl JobSettings {
    pub fn from_config(config: &Config) -> Self {
        let mut selection = domain::TrainerSelection {
            auto: config.fal.auto_model_selection,
            ..domain::TrainerSelection::default()
        };
        for (kind, trainer) in &config.fal.trainer_by_kind {
            selection = selection.with_override(*kind, *trainer);
        }
        let portrait = &config.fal.portrait;
        Self {
            selection,
            portrait_defaults: domain::PortraitDefaults {
                steps: portrait.steps,
                learning_rate: portrait.learning_rate,
                subject_crop: portrait.subject_crop,
                create_masks: portrait.create_masks,
                multiresolution: portrait.multiresolution,
            },
            prices: config.fal.prices.clone(),
            timeout: config.fal.training_timeout,
            status_check_interval: config.fal.status_check_interval,
            status_check_max_interval: config.fal.status_check_max_interval,
            webhook_grace: config.fal.webhook_grace,
            deadline_factor: config.fal.deadline_factor,
            lease: config.job_lease,
            public_base_url: config.public_base_url.clone(),
            generation_max_prompts: config.generation_max_prompts,
            generation_timeout: config.generation_timeout,
            custody_max_attempts: config.custody_max_attempts,
            custody_retry_interval: config.custody_retry_interval,
            cancel_max_attempts: config.cancel_max_attempts,
            cancel_retry_interval: config.cancel_retry_interval,
            generation_prices: domain::GenerationPrices::default(),
        }
    }
}

impl JobSettings {
    /// Where a submitted job's status checks and deadline fall.
    pub fn schedule(&self) -> domain::CheckSchedule {
        domain::CheckSchedule {
            grace: self.webhook_grace,
            interval: self.status_check_interval,
            max_interval: self.status_check_max_interval,
            deadline_factor: self.deadline_factor,
        }
    }

    /// The most a job of `kind` may take at fal: its deadline's cap.
    pub fn timeout_of(&self, kind: domain::JobKind) -> Duration {
        match kind {
            domain::JobKind::Training => self.timeout,
            domain::JobKind::Generation => self.generation_timeout,
        }
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// How often idle workers look for work they were not woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerIntervals {
    pub idle_poll: Duration,
    pub reconcile_tick: Duration,
    /// Between clean-up rounds (retention, deleted blobs, abandoned uploads).
    pub janitor: Duration,
}

impl Default for WorkerIntervals {
    fn default() -> Self {
        Self {
            idle_poll: Duration::from_secs(1),
            reconcile_tick: Duration::from_secs(1),
            janitor: Duration::from_secs(60),
        }
    }
}

/// Renders an outbox row as the body callers receive. The transport that documents the
/// resources owns their shapes, so it supplies this when it builds the [`Service`].
pub type EventBodies = fn(&store::events::UnsequencedEvent) -> serde_json::Value;

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
    /// This process's open event streams, woken per tenant.
    pub streams: Arc<crate::event_streams::StreamRegistry>,
    /// Wakes the webhook relay when deliveries may have fallen due.
    pub relay_wake: Arc<tokio::sync::Notify>,
    /// Delivers webhooks: never follows redirects, bounded by the delivery timeout.
    pub webhook_fetcher: Arc<safe_fetch::SafeFetcher>,
    /// Renders event bodies for the sequencer.
    pub event_bodies: EventBodies,
    /// Decoded pixels in flight across every photo check of this process.
    pub decode_budget: crate::photos::DecodeBudget,
    /// The threads photo and archive checks run on.
    pub check_pool: crate::check_pool::CheckPool,
    /// The process's metrics; `store` reports job transitions into it.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// fal callbacks waiting for the next batch commit.
    pub callbacks: Arc<crate::callback_batch::CallbackQueue>,
    /// Set when the process begins to stop: it reports itself not ready, and event streams end
    /// so draining connections does not wait for them.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Why the application layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("building the URL fetchers: {0}")]
    Fetchers(#[from] safe_fetch::FetchError),
    #[error("starting the photo check threads: {0}")]
    CheckThreads(std::io::Error),
}

/// How every scratch file and directory of the service is named (then its purpose).
pub const SCRATCH_PREFIX: &str = "avatars-";

fn scratch_prefix(purpose: &str) -> String {
    format!("{SCRATCH_PREFIX}{purpose}-")
}

impl Service {
    pub fn new(
        store: store::Store,
        blobs: store::BlobStore,
        settings: Settings,
        fal: Option<FalLink>,
        event_bodies: EventBodies,
    ) -> Result<Self, StartError> {
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
            allow_loopback: settings.events.allow_loopback,
            timeout: settings.events.delivery_timeout,
            connect_timeout: settings.events.delivery_timeout,
            max_redirects: 0,
            ..policy(64 * 1024)
        })?;
        let decode_budget = crate::photos::DecodeBudget::new(settings.photos.decode_budget_pixels);
        let check_pool = crate::check_pool::CheckPool::new(settings.photos.check_threads as usize)
            .map_err(StartError::CheckThreads)?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let callbacks = Arc::new(crate::callback_batch::CallbackQueue::new(
            settings.callback_batches,
        ));
        Ok(Self {
            store: store
                .with_transition_observer(metrics.clone())
                .with_key_cache(settings.api_key_cache),
            blobs,
            settings: Arc::new(settings),
            photo_fetcher: Arc::new(photo_fetcher),
            archive_fetcher: Arc::new(archive_fetcher),
            fal,
            work: Arc::new(tokio::sync::Notify::new()),
            worker_id: uuid::Uuid::new_v4(),
            generation_events: tokio::sync::broadcast::channel(1024).0,
            sequenced_events: tokio::sync::broadcast::channel(1024).0,
            streams: Arc::default(),
            relay_wake: Arc::new(tokio::sync::Notify::new()),
            webhook_fetcher: Arc::new(webhook_fetcher),
            event_bodies,
            decode_budget,
            check_pool,
            callbacks,
            metrics,
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
        })
    }

    /// Begins a stop: readiness turns false (load balancers send no new requests) and every
    /// event stream of this process ends (they never end by themselves; clients reconnect
    /// elsewhere with `Last-Event-ID`).
    pub fn begin_stopping(&self) {
        self.stopping.send_replace(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Changes when the process begins to stop.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// A new scratch file for `purpose` (`upload`, `lora`, ...), removed when dropped. Named
    /// [`SCRATCH_PREFIX`]`<purpose>-`, so the janitor finds what a process that died left.
    pub fn scratch_file(&self, purpose: &str) -> std::io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(&scratch_prefix(purpose))
            .tempfile_in(&self.settings.scratch_dir)
    }

    /// [`Service::scratch_file`] for a directory, removed with its contents when dropped.
    pub fn scratch_directory(&self, purpose: &str) -> std::io::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&scratch_prefix(purpose))
            .tempdir_in(&self.settings.scratch_dir)
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
