//! Configuration from the environment (names in docs/architecture.md).
//!
//! Every variable is read and checked at start-up; the first bad one stops the service with a
//! single line naming it and what is wrong. Secrets are wrapped so they never print.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

/// A configuration problem, named by its variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Export of spans over OTLP/HTTP (protobuf), with the standard OpenTelemetry variable names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// The collector's base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`); spans go to `{base}/v1/traces`.
    /// `None`: no spans are exported and no trace context is kept or sent.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// How long finished spans wait to be sent in a batch (`OTEL_BSP_SCHEDULE_DELAY`).
    pub schedule_delay: Duration,
}

impl Default for TraceSettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "avatars".into(),
            schedule_delay: Duration::from_secs(5),
        }
    }
}

/// Overrides of the portrait trainer's balanced preset, with the seed's variable names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortraitOverrides {
    pub steps: Option<u32>,
    pub learning_rate: Option<f64>,
    pub subject_crop: Option<bool>,
    pub create_masks: Option<bool>,
    pub multiresolution: Option<bool>,
}

/// fal.ai connection and training settings.
#[derive(Debug, Clone)]
pub struct FalSettings {
    /// Absent: dev mode runs the in-process simulator instead.
    pub key: Option<SecretString>,
    /// The fal user id callbacks must carry (`X-Fal-Webhook-User-Id`); any when absent.
    pub webhook_user_id: Option<String>,
    pub queue_url: String,
    pub rest_url: String,
    pub cdn_url: String,
    pub jwks_url: String,
    pub portrait: PortraitOverrides,
    pub training_timeout: Duration,
    pub status_check_interval: Duration,
    /// Added to a job's expected duration before its webhook counts as overdue
    /// (`FAL_WEBHOOK_GRACE`).
    pub webhook_grace: Duration,
    /// The longest gap between two safety-net status checks (`FAL_STATUS_CHECK_MAX_INTERVAL`).
    pub status_check_max_interval: Duration,
    /// A job's deadline: this many times its expected duration, plus the grace
    /// (`FAL_DEADLINE_FACTOR`).
    pub deadline_factor: u32,
    pub max_retries: u32,
    pub auto_model_selection: bool,
    /// Overrides of the kind -> trainer mapping used by automatic selection.
    pub trainer_by_kind: Vec<(domain::AvatarKind, domain::Trainer)>,
    pub prices: domain::TrainingPrices,
}

/// Everything the service reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Absent only in dev mode, which then runs its own PostgreSQL.
    pub database_url: Option<SecretString>,
    /// Also in `database`; kept for callers that only size a pool.
    pub database_max_connections: u32,
    /// The pool's size and its timeouts.
    pub database: store::PoolSettings,
    pub bind_addr: SocketAddr,
    pub public_base_url: Option<String>,
    pub storage_url: Option<String>,
    /// How to reach the S3-compatible store when `storage_url` is `s3://`.
    pub s3: store::S3Options,
    pub log_format: LogFormat,
    pub traces: TraceSettings,
    pub http: HttpLimits,
    pub photos: PhotoSettings,
    pub fetch: FetchSettings,
    pub fal: FalSettings,
    /// Most prompts in one generation request.
    pub generation_max_prompts: usize,
    /// How long a worker owns a job before another replica may take it over (`JOB_LEASE`).
    pub job_lease: Duration,
    /// A generation item's budget from its creation (`GENERATION_TIMEOUT`).
    pub generation_timeout: Duration,
    /// Attempts at fetching a finished job's result and copying its artifacts into our
    /// storage before the job fails `artifact_unavailable` (`CUSTODY_MAX_ATTEMPTS`).
    pub custody_max_attempts: u32,
    /// The wait after the first failed custody attempt, doubling after each further one up
    /// to 64 times this (`CUSTODY_RETRY_INTERVAL`).
    pub custody_retry_interval: Duration,
    /// Attempts at a cancel owed to fal (a caller's, a deadline's, a deleted avatar's) that
    /// fal answers with a server or transport error, before the job ends with the cancel
    /// unconfirmed (`CANCEL_MAX_ATTEMPTS`).
    pub cancel_max_attempts: u32,
    /// The wait after the first failed cancel, doubling after each further one up to 64
    /// times this (`CANCEL_RETRY_INTERVAL`).
    pub cancel_retry_interval: Duration,
    pub events: EventSettings,
    pub shutdown: ShutdownSettings,
    pub tenants: TenantLimits,
    /// The per-process cache of live API keys (`API_KEY_CACHE_TTL`,
    /// `API_KEY_CACHE_MAX_ENTRIES`).
    pub api_key_cache: store::KeyCacheSettings,
    pub unknown_callbacks: UnknownCallbackSettings,
    pub callback_batches: CallbackBatchSettings,
    pub retention: RetentionSettings,
    /// Between the janitor's rounds (retention, blob deletions, abandoned uploads).
    pub janitor_interval: Duration,
    /// Webhook endpoints on this machine (`localhost`, 127.0.0.0/8, `::1`) allowed, over http
    /// too. `None`: the mode decides (on in `avatars dev`, off in `avatars serve`).
    pub webhook_allow_loopback: Option<bool>,
    /// The key ring that seals webhook signing secrets and derives fal callback tokens
    /// (`SECRETS_KEYS`). Required by `avatars serve`; `avatars dev` keeps its own.
    pub secrets_keys: Option<std::sync::Arc<crate::secrets::KeyRing>>,
}

/// The smallest database pool the service starts with. The sequencer, relay, janitor,
/// submitter, custody and reconciler loops may each hold a connection at the same moment;
/// one more keeps requests (and fal's callbacks) from waiting on all of them. The LISTEN
/// connection is not taken from the pool.
pub const MIN_DATABASE_CONNECTIONS: u32 = 7;

/// How a stopping process hands over to the others (SIGTERM in a rolling update).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownSettings {
    /// Between turning not-ready and closing the listener, so load balancers stop sending
    /// requests before connections are refused.
    pub delay: Duration,
    /// How long the job workers may take to finish the job in hand.
    pub worker_grace: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(5),
            worker_grace: Duration::from_secs(30),
        }
    }
}

/// What one tenant (or one of its API keys) may take of the service, so no tenant can crowd
/// out the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLimits {
    /// Requests per second one API key may make, on average.
    pub key_requests_per_second: u32,
    /// Requests one API key may make at once after being idle.
    pub key_request_burst: u32,
    /// Trainings of one tenant not yet finished.
    pub max_active_trainings: u32,
    /// Generations of one tenant with images still being made.
    pub max_active_generations: u32,
    pub max_webhook_endpoints: u32,
    /// Open event streams of one tenant on one replica.
    pub max_event_streams: u32,
    /// Most days one usage report may span (`USAGE_MAX_RANGE_DAYS`).
    pub usage_max_range_days: u32,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            key_requests_per_second: 20,
            key_request_burst: 40,
            max_active_trainings: 5,
            max_active_generations: 20,
            max_webhook_endpoints: 10,
            max_event_streams: 5,
            usage_max_range_days: 366,
        }
    }
}

/// Limits on fal callbacks that name no job of ours: anyone with a fal account can aim
/// callbacks at this service, so what is kept of them for reconciliation is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCallbackSettings {
    /// Larger bodies are kept without their body (request id, status and digest only).
    pub max_body_bytes: usize,
    /// Callbacks kept at most; further ones are acknowledged and not kept.
    pub max_kept: u32,
    /// How long one is kept.
    pub retention: Duration,
}

impl Default for UnknownCallbackSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            max_kept: 10_000,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// How fal callbacks are committed together (group commit): callbacks that arrive while a
/// batch commits are applied in the next one, one transaction for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallbackBatchSettings {
    /// Most callbacks in one transaction (`FAL_CALLBACK_BATCH_MAX`); 1 commits each alone.
    pub max_callbacks: usize,
    /// Batches committed at once (`FAL_CALLBACK_COMMITTERS`), each on its own connection.
    pub committers: usize,
    /// How long a committer waits for callbacks still being verified before it commits what
    /// it has (`FAL_CALLBACK_BATCH_WAIT`); it never waits when none are on their way.
    pub wait: Duration,
}

impl Default for CallbackBatchSettings {
    fn default() -> Self {
        Self {
            max_callbacks: 128,
            committers: 2,
            wait: Duration::from_micros(500),
        }
    }
}

/// How long the janitor keeps rows the service no longer needs, and how it deletes them and
/// the blobs of deleted rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Events whose every webhook delivery succeeded (or that had none), with their deliveries
    /// and attempts.
    pub delivered_events: Duration,
    /// Events with a failed delivery (replayable until then); at least `delivered_events`.
    pub failed_events: Duration,
    /// fal callbacks of finished jobs.
    pub fal_callbacks: Duration,
    /// Idempotency keys whose request finished: a retry with the key after this runs again.
    pub idempotency_keys: Duration,
    /// Job events (the audit trail of status changes), counted from the job's end.
    pub job_events: Duration,
    /// Webhook signing secrets, counted from the end of their rotation's overlap.
    pub expired_secrets: Duration,
    /// Rows one batch (one short transaction) deletes at most.
    pub batch_rows: u32,
    /// Longest a batch waits for a lock another transaction holds; then the trim stops until
    /// the next round.
    pub lock_timeout: Duration,
    /// Wait after a blob deletion's first failure; doubles with each further failure.
    pub blob_retry_base: Duration,
    /// The longest wait between two attempts to delete one blob.
    pub blob_retry_max: Duration,
    /// Scratch files (`avatars-*` in the scratch directory) untouched for longer belong to a
    /// process that died mid-work, and are removed: they may hold a person's photos.
    pub scratch_files: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        let batches = store::TrimBatches::default();
        Self {
            delivered_events: Duration::from_secs(7 * DAY),
            failed_events: Duration::from_secs(30 * DAY),
            fal_callbacks: Duration::from_secs(30 * DAY),
            idempotency_keys: Duration::from_secs(DAY),
            job_events: Duration::from_secs(90 * DAY),
            expired_secrets: Duration::from_secs(DAY),
            batch_rows: batches.rows,
            lock_timeout: batches.lock_timeout,
            blob_retry_base: Duration::from_secs(30),
            blob_retry_max: Duration::from_secs(6 * 3600),
            scratch_files: Duration::from_secs(DAY),
        }
    }
}

impl RetentionSettings {
    /// How the trims batch their deletes.
    pub fn batches(&self) -> store::TrimBatches {
        store::TrimBatches {
            rows: self.batch_rows,
            lock_timeout: self.lock_timeout,
        }
    }
}

/// How events reach callers: webhook delivery and live streams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventSettings {
    /// Multiplies the retry schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h); below 1 only
    /// in tests and development.
    pub retry_scale: f64,
    /// Deadline for one delivery attempt, connect to last byte.
    pub delivery_timeout: Duration,
    /// How long a relay owns an endpoint's deliveries before another may take over. Longer
    /// than `delivery_timeout`, so a live relay never loses an attempt it is making.
    pub relay_lease: Duration,
    /// How often the relay looks for due retries it was not woken for.
    pub relay_poll: Duration,
    /// How often new events are looked for when no wake-up came.
    pub sequencer_poll: Duration,
    /// Comment lines on idle event streams, so proxies keep them open.
    pub heartbeat: Duration,
    /// Endpoints one relay delivers to at the same time.
    pub relay_concurrency: usize,
    /// Of those, how many may belong to one tenant, so one tenant's slow endpoints cannot
    /// hold every slot.
    pub relay_tenant_slots: usize,
    /// An endpoint whose every attempt failed for this long is disabled.
    pub disable_after: Duration,
    /// How often open event streams are checked for revoked keys.
    pub stream_key_check: Duration,
    /// Webhook endpoints on loopback addresses allowed (any port, http too). Resolved per
    /// mode from [`Config::webhook_allow_loopback`] by [`crate::Settings`].
    pub allow_loopback: bool,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            retry_scale: 1.0,
            delivery_timeout: Duration::from_secs(15),
            relay_lease: Duration::from_secs(60),
            relay_poll: Duration::from_millis(500),
            sequencer_poll: Duration::from_millis(100),
            heartbeat: Duration::from_secs(15),
            relay_concurrency: 16,
            relay_tenant_slots: 4,
            disable_after: Duration::from_secs(5 * 24 * 3600),
            stream_key_check: Duration::from_secs(2),
            allow_loopback: false,
        }
    }
}

/// Limits on avatars' photo sets and on each photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoSettings {
    pub min_photos: u32,
    pub max_photos: u32,
    pub max_photo_bytes: u64,
    pub min_short_side: u32,
    /// Parts one upload request may carry (files and form fields alike).
    pub max_parts: u32,
    /// Decoded pixels in flight across the process; decodes beyond it wait their turn.
    pub decode_budget_pixels: u32,
    /// Threads that decode and check photos and archives (`PHOTO_CHECK_THREADS`).
    pub check_threads: u32,
    /// What face findings do to a training, per avatar kind (`PHOTO_FACE_POLICY`).
    pub face_policy: domain::FacePolicies,
}

impl Default for PhotoSettings {
    fn default() -> Self {
        Self {
            min_photos: 10,
            max_photos: 20,
            max_photo_bytes: 20 * 1024 * 1024,
            min_short_side: 512,
            max_parts: 100,
            // One photo at the largest accepted size (50 MP), about 150 MB as 8-bit RGB.
            decode_budget_pixels: 50_000_000,
            check_threads: std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
            face_policy: domain::FacePolicies::default(),
        }
    }
}

/// How the service fetches URLs callers give it (photos, training archives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    /// Plain http allowed (development only).
    pub allow_http: bool,
    /// Private addresses reachable anyway, as exact `ip:port` (development only).
    pub allowed_private: Vec<SocketAddr>,
    pub max_archive_bytes: u64,
    pub timeout: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            allow_http: false,
            allowed_private: Vec::new(),
            max_archive_bytes: 512 * 1024 * 1024,
            timeout: Duration::from_secs(120),
        }
    }
}

/// How every request is served: the limits it is held to, and what its answer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers; also how long an idle
    /// keep-alive connection is kept waiting for its next request.
    pub header_read_timeout: Duration,
    /// Connections served at once; further clients wait in the listen queue.
    pub max_connections: usize,
    /// The lease of an Idempotency-Key in flight: its request renews it every third of this
    /// while it runs, so only a request that died loses its key, this long after.
    pub idempotency_lease: Duration,
    /// Every answer carries a `Server-Timing` header: the request's time in the database and
    /// outside it (`SERVER_TIMING`). Off by default: timings are for measuring, not for
    /// every caller.
    pub server_timing: bool,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            idempotency_lease: Duration::from_secs(10),
            server_timing: false,
        }
    }
}

/// Every setting at its default: what an empty environment gives.
impl Default for Config {
    fn default() -> Self {
        Self::from_lookup(|_| None).expect("the defaults are valid")
    }
}

impl Config {
    /// Every variable [`Config::from_lookup`] reads, so deployment files can be checked against
    /// what the service understands (a test keeps this list and the reads in step).
    pub const VARIABLES: &'static [&'static str] = &[
        "DATABASE_URL",
        "DATABASE_MAX_CONNECTIONS",
        "DATABASE_ACQUIRE_TIMEOUT",
        "DATABASE_STATEMENT_TIMEOUT",
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
        "BIND_ADDR",
        "PUBLIC_BASE_URL",
        "STORAGE_URL",
        "LOG_FORMAT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_BSP_SCHEDULE_DELAY",
        "MAX_BODY_BYTES",
        "REQUEST_TIMEOUT",
        "HTTP_HEADER_READ_TIMEOUT",
        "HTTP_MAX_CONNECTIONS",
        "IDEMPOTENCY_LEASE",
        "SERVER_TIMING",
        "AVATAR_MIN_PHOTOS",
        "AVATAR_MAX_PHOTOS",
        "PHOTO_MAX_PARTS",
        "PHOTO_DECODE_BUDGET_PIXELS",
        "PHOTO_CHECK_THREADS",
        "PHOTO_MAX_BYTES",
        "PHOTO_MIN_SHORT_SIDE",
        "PHOTO_FACE_POLICY",
        "FETCH_ALLOW_HTTP",
        "FETCH_ALLOWED_PRIVATE",
        "ARCHIVE_MAX_BYTES",
        "FETCH_TIMEOUT",
        "GENERATION_MAX_PROMPTS",
        "SHUTDOWN_DELAY",
        "SHUTDOWN_WORKER_GRACE",
        "WEBHOOK_TIMEOUT",
        "WEBHOOK_LEASE",
        "WEBHOOK_CONCURRENCY",
        "WEBHOOK_TENANT_SLOTS",
        "WEBHOOK_DISABLE_AFTER",
        "WEBHOOK_RETRY_SCALE",
        "WEBHOOK_ALLOW_LOOPBACK",
        "EVENTS_KEY_CHECK_INTERVAL",
        "EVENTS_HEARTBEAT",
        "API_KEY_RATE_PER_SECOND",
        "API_KEY_RATE_BURST",
        "API_KEY_CACHE_TTL",
        "API_KEY_CACHE_MAX_ENTRIES",
        "TENANT_MAX_ACTIVE_TRAININGS",
        "TENANT_MAX_ACTIVE_GENERATIONS",
        "TENANT_MAX_WEBHOOK_ENDPOINTS",
        "TENANT_MAX_EVENT_STREAMS",
        "USAGE_MAX_RANGE_DAYS",
        "FAL_UNKNOWN_CALLBACK_MAX_BYTES",
        "FAL_UNKNOWN_CALLBACKS_MAX",
        "FAL_UNKNOWN_CALLBACK_RETENTION",
        "FAL_CALLBACK_BATCH_MAX",
        "FAL_CALLBACK_COMMITTERS",
        "FAL_CALLBACK_BATCH_WAIT",
        "RETENTION_DELIVERED_EVENTS",
        "RETENTION_FAILED_EVENTS",
        "RETENTION_FAL_CALLBACKS",
        "RETENTION_IDEMPOTENCY_KEYS",
        "RETENTION_JOB_EVENTS",
        "RETENTION_EXPIRED_SECRETS",
        "RETENTION_BATCH_ROWS",
        "RETENTION_LOCK_TIMEOUT",
        "RETENTION_SCRATCH_FILES",
        "BLOB_DELETE_RETRY_BASE",
        "BLOB_DELETE_RETRY_MAX",
        "JANITOR_INTERVAL",
        "FAL_KEY",
        "FAL_WEBHOOK_USER_ID",
        "FAL_QUEUE_URL",
        "FAL_REST_URL",
        "FAL_CDN_URL",
        "FAL_JWKS_URL",
        "FAL_PORTRAIT_STEPS",
        "FAL_PORTRAIT_LEARNING_RATE",
        "FAL_PORTRAIT_SUBJECT_CROP",
        "FAL_PORTRAIT_CREATE_MASKS",
        "FAL_PORTRAIT_MULTIRESOLUTION",
        "FAL_TRAINING_TIMEOUT",
        "FAL_STATUS_CHECK_INTERVAL",
        "FAL_STATUS_CHECK_MAX_INTERVAL",
        "FAL_WEBHOOK_GRACE",
        "FAL_DEADLINE_FACTOR",
        "FAL_MAX_RETRIES",
        "FAL_AUTO_MODEL_SELECTION",
        "FAL_TRAINER_BY_KIND",
        "PRICE_PORTRAIT_PER_STEP_USD",
        "PRICE_PORTRAIT_MIN_BILLED_STEPS",
        "PRICE_FAST_LORA_PER_RUN_USD",
        "PRICE_PRO_PER_RUN_USD",
        "AWS_ENDPOINT_URL",
        "AWS_ALLOW_HTTP",
        "S3_ADDRESSING_STYLE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_SESSION_TOKEN",
        "JOB_LEASE",
        "GENERATION_TIMEOUT",
        "CUSTODY_MAX_ATTEMPTS",
        "CUSTODY_RETRY_INTERVAL",
        "CANCEL_MAX_ATTEMPTS",
        "CANCEL_RETRY_INTERVAL",
        "SECRETS_KEYS",
    ];

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env { lookup: &lookup };
        let http_defaults = HttpLimits::default();
        let database = {
            let defaults = store::PoolSettings::default();
            let max_connections = env
                .parse_range("DATABASE_MAX_CONNECTIONS", 1, 1000)?
                .unwrap_or(defaults.max_connections);
            let least = MIN_DATABASE_CONNECTIONS;
            require(max_connections >= least, "DATABASE_MAX_CONNECTIONS", || {
                format!(
                    "must be at least {least} (the background workers may hold {} connections at once, and requests need one more), got {max_connections}",
                    least - 1
                )
            })?;
            store::PoolSettings {
                max_connections,
                acquire_timeout: env
                    .seconds("DATABASE_ACQUIRE_TIMEOUT", 1, 3)?
                    .unwrap_or(defaults.acquire_timeout),
                statement_timeout: env
                    .seconds("DATABASE_STATEMENT_TIMEOUT", 1, 3600)?
                    .unwrap_or(defaults.statement_timeout),
                idle_in_transaction_timeout: env
                    .seconds("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", 1, 3600)?
                    .unwrap_or(defaults.idle_in_transaction_timeout),
            }
        };
        Ok(Config {
            database_url: env.secret("DATABASE_URL"),
            database_max_connections: database.max_connections,
            database,
            bind_addr: env
                .parse_with("BIND_ADDR", "a socket address such as 0.0.0.0:8080", |v| {
                    v.parse::<SocketAddr>().ok()
                })?
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            public_base_url: env
                .url("PUBLIC_BASE_URL")?
                .map(|u| u.trim_end_matches('/').to_string()),
            storage_url: env.string("STORAGE_URL"),
            s3: s3_options(&env)?,
            log_format: env
                .parse_with("LOG_FORMAT", "`text` or `json`", |v| match v {
                    "text" => Some(LogFormat::Text),
                    "json" => Some(LogFormat::Json),
                    _ => None,
                })?
                .unwrap_or(LogFormat::Text),
            traces: {
                let defaults = TraceSettings::default();
                TraceSettings {
                    otlp_endpoint: env
                        .url("OTEL_EXPORTER_OTLP_ENDPOINT")?
                        .map(|u| u.trim_end_matches('/').to_string()),
                    service_name: env
                        .string("OTEL_SERVICE_NAME")
                        .map(|name| name.trim().to_string())
                        .unwrap_or(defaults.service_name),
                    schedule_delay: env
                        .parse_range("OTEL_BSP_SCHEDULE_DELAY", 1, 60_000)?
                        .map(Duration::from_millis)
                        .unwrap_or(defaults.schedule_delay),
                }
            },
            http: HttpLimits {
                max_body_bytes: env
                    .parse_range("MAX_BODY_BYTES", 1024, 1024 * 1024 * 1024)?
                    .map(|v: u64| v as usize)
                    .unwrap_or(http_defaults.max_body_bytes),
                request_timeout: env
                    .seconds("REQUEST_TIMEOUT", 1, 3600)?
                    .unwrap_or(http_defaults.request_timeout),
                header_read_timeout: env
                    .seconds("HTTP_HEADER_READ_TIMEOUT", 1, 300)?
                    .unwrap_or(http_defaults.header_read_timeout),
                max_connections: env
                    .parse_range("HTTP_MAX_CONNECTIONS", 1, 1_000_000)?
                    .unwrap_or(http_defaults.max_connections),
                idempotency_lease: env
                    .seconds("IDEMPOTENCY_LEASE", 1, 600)?
                    .unwrap_or(http_defaults.idempotency_lease),
                server_timing: env
                    .boolean("SERVER_TIMING")?
                    .unwrap_or(http_defaults.server_timing),
            },
            photos: {
                let defaults = PhotoSettings::default();
                let min_photos = env
                    .parse_range("AVATAR_MIN_PHOTOS", 1, 1000)?
                    .unwrap_or(defaults.min_photos);
                let max_photos = env
                    .parse_range("AVATAR_MAX_PHOTOS", 1, 1000)?
                    .unwrap_or(defaults.max_photos);
                require(max_photos >= min_photos, "AVATAR_MAX_PHOTOS", || {
                    format!("must be at least AVATAR_MIN_PHOTOS ({min_photos}), got {max_photos}")
                })?;
                let max_parts = env
                    .parse_range("PHOTO_MAX_PARTS", 1, 100_000)?
                    .unwrap_or(defaults.max_parts);
                require(max_parts >= max_photos, "PHOTO_MAX_PARTS", || {
                    format!("must be at least AVATAR_MAX_PHOTOS ({max_photos}), got {max_parts}")
                })?;
                PhotoSettings {
                    min_photos,
                    max_photos,
                    max_parts,
                    decode_budget_pixels: env
                        .parse_range("PHOTO_DECODE_BUDGET_PIXELS", 1_000_000, 4_000_000_000)?
                        .unwrap_or(defaults.decode_budget_pixels),
                    check_threads: env
                        .parse_range("PHOTO_CHECK_THREADS", 1, 256)?
                        .unwrap_or(defaults.check_threads),
                    max_photo_bytes: env
                        .parse_range("PHOTO_MAX_BYTES", 1024, 200 * 1024 * 1024)?
                        .unwrap_or(defaults.max_photo_bytes),
                    min_short_side: env
                        .parse_range("PHOTO_MIN_SHORT_SIDE", 64, 8192)?
                        .unwrap_or(defaults.min_short_side),
                    face_policy: env
                        .parse_with(
                            "PHOTO_FACE_POLICY",
                            "comma-separated kind=policy pairs (policy: require, warn or off), \
                             e.g. character=warn,product=off",
                            |v| {
                                v.split(',')
                                    .try_fold(defaults.face_policy, |policies, pair| {
                                        let (kind, policy) = pair.split_once('=')?;
                                        Some(policies.with_override(
                                            domain::AvatarKind::parse(kind.trim())?,
                                            domain::FacePolicy::parse(policy.trim())?,
                                        ))
                                    })
                            },
                        )?
                        .unwrap_or(defaults.face_policy),
                }
            },
            fetch: {
                let defaults = FetchSettings::default();
                FetchSettings {
                    allow_http: env.boolean("FETCH_ALLOW_HTTP")?.unwrap_or(false),
                    allowed_private: env
                        .parse_with(
                            "FETCH_ALLOWED_PRIVATE",
                            "a comma-separated list of ip:port addresses",
                            |v| {
                                v.split(',')
                                    .map(|a| a.trim().parse::<SocketAddr>().ok())
                                    .collect::<Option<Vec<_>>>()
                            },
                        )?
                        .unwrap_or_default(),
                    max_archive_bytes: env
                        .parse_range("ARCHIVE_MAX_BYTES", 1024 * 1024, 4 * 1024 * 1024 * 1024)?
                        .unwrap_or(defaults.max_archive_bytes),
                    timeout: env
                        .seconds("FETCH_TIMEOUT", 1, 3600)?
                        .unwrap_or(defaults.timeout),
                }
            },
            job_lease: env
                .seconds("JOB_LEASE", 5, 24 * 3600)?
                .unwrap_or(Duration::from_secs(600)),
            generation_timeout: env
                .seconds("GENERATION_TIMEOUT", 30, 24 * 3600)?
                .unwrap_or(Duration::from_secs(600)),
            custody_max_attempts: env
                .parse_range("CUSTODY_MAX_ATTEMPTS", 1, 100)?
                .unwrap_or(8),
            custody_retry_interval: env
                .seconds("CUSTODY_RETRY_INTERVAL", 1, 3600)?
                .unwrap_or(Duration::from_secs(10)),
            cancel_max_attempts: env.parse_range("CANCEL_MAX_ATTEMPTS", 1, 100)?.unwrap_or(8),
            cancel_retry_interval: env
                .seconds("CANCEL_RETRY_INTERVAL", 1, 3600)?
                .unwrap_or(Duration::from_secs(10)),
            generation_max_prompts: env
                .parse_range("GENERATION_MAX_PROMPTS", 1, 100)?
                .unwrap_or(10),
            shutdown: {
                let defaults = ShutdownSettings::default();
                ShutdownSettings {
                    delay: env
                        .seconds_from_zero("SHUTDOWN_DELAY", 300)?
                        .unwrap_or(defaults.delay),
                    worker_grace: env
                        .seconds("SHUTDOWN_WORKER_GRACE", 1, 3600)?
                        .unwrap_or(defaults.worker_grace),
                }
            },
            events: {
                let defaults = EventSettings::default();
                let delivery_timeout = env
                    .seconds("WEBHOOK_TIMEOUT", 1, 300)?
                    .unwrap_or(defaults.delivery_timeout);
                let relay_lease = env
                    .seconds("WEBHOOK_LEASE", 2, 3600)?
                    .unwrap_or(defaults.relay_lease);
                require(
                    relay_lease >= delivery_timeout + Duration::from_secs(1),
                    "WEBHOOK_LEASE",
                    || {
                        format!(
                            "must exceed WEBHOOK_TIMEOUT ({} s) by at least a second, got {} s",
                            delivery_timeout.as_secs(),
                            relay_lease.as_secs()
                        )
                    },
                )?;
                let relay_concurrency = env
                    .parse_range("WEBHOOK_CONCURRENCY", 1, 1024)?
                    .unwrap_or(defaults.relay_concurrency);
                let relay_tenant_slots = env
                    .parse_range("WEBHOOK_TENANT_SLOTS", 1, 1024)?
                    .unwrap_or(defaults.relay_tenant_slots.min(relay_concurrency));
                require(
                    relay_tenant_slots <= relay_concurrency,
                    "WEBHOOK_TENANT_SLOTS",
                    || {
                        format!("must not exceed WEBHOOK_CONCURRENCY ({relay_concurrency}), got {relay_tenant_slots}")
                    },
                )?;
                EventSettings {
                    relay_concurrency,
                    relay_tenant_slots,
                    disable_after: env
                        .seconds("WEBHOOK_DISABLE_AFTER", 1, 365 * 24 * 3600)?
                        .unwrap_or(defaults.disable_after),
                    stream_key_check: env
                        .seconds("EVENTS_KEY_CHECK_INTERVAL", 1, 300)?
                        .unwrap_or(defaults.stream_key_check),
                    retry_scale: env
                        .parse_with(
                            "WEBHOOK_RETRY_SCALE",
                            "a number from 0.0001 to 100, such as 1 or 0.01",
                            |v| {
                                v.parse::<f64>()
                                    .ok()
                                    .filter(|f| (0.0001..=100.0).contains(f))
                            },
                        )?
                        .unwrap_or(defaults.retry_scale),
                    delivery_timeout,
                    relay_lease,
                    heartbeat: env
                        .seconds("EVENTS_HEARTBEAT", 1, 300)?
                        .unwrap_or(defaults.heartbeat),
                    ..defaults
                }
            },
            tenants: {
                let defaults = TenantLimits::default();
                TenantLimits {
                    key_requests_per_second: env
                        .parse_range("API_KEY_RATE_PER_SECOND", 1, 100_000)?
                        .unwrap_or(defaults.key_requests_per_second),
                    key_request_burst: env
                        .parse_range("API_KEY_RATE_BURST", 1, 100_000)?
                        .unwrap_or(defaults.key_request_burst),
                    max_active_trainings: env
                        .parse_range("TENANT_MAX_ACTIVE_TRAININGS", 1, 10_000)?
                        .unwrap_or(defaults.max_active_trainings),
                    max_active_generations: env
                        .parse_range("TENANT_MAX_ACTIVE_GENERATIONS", 1, 100_000)?
                        .unwrap_or(defaults.max_active_generations),
                    max_webhook_endpoints: env
                        .parse_range("TENANT_MAX_WEBHOOK_ENDPOINTS", 1, 1000)?
                        .unwrap_or(defaults.max_webhook_endpoints),
                    max_event_streams: env
                        .parse_range("TENANT_MAX_EVENT_STREAMS", 1, 10_000)?
                        .unwrap_or(defaults.max_event_streams),
                    usage_max_range_days: env
                        .parse_range("USAGE_MAX_RANGE_DAYS", 1, 3660)?
                        .unwrap_or(defaults.usage_max_range_days),
                }
            },
            api_key_cache: {
                let defaults = store::KeyCacheSettings::default();
                store::KeyCacheSettings {
                    ttl: env
                        .seconds_from_zero("API_KEY_CACHE_TTL", 3600)?
                        .unwrap_or(defaults.ttl),
                    max_entries: env
                        .parse_range("API_KEY_CACHE_MAX_ENTRIES", 1, 1_000_000)?
                        .unwrap_or(defaults.max_entries),
                }
            },
            unknown_callbacks: {
                let defaults = UnknownCallbackSettings::default();
                UnknownCallbackSettings {
                    max_body_bytes: env
                        .parse_range("FAL_UNKNOWN_CALLBACK_MAX_BYTES", 0, 1024 * 1024)?
                        .unwrap_or(defaults.max_body_bytes),
                    max_kept: env
                        .parse_range("FAL_UNKNOWN_CALLBACKS_MAX", 0, 10_000_000)?
                        .unwrap_or(defaults.max_kept),
                    retention: env
                        .seconds("FAL_UNKNOWN_CALLBACK_RETENTION", 60, 365 * 24 * 3600)?
                        .unwrap_or(defaults.retention),
                }
            },
            callback_batches: {
                let defaults = CallbackBatchSettings::default();
                CallbackBatchSettings {
                    max_callbacks: env
                        .parse_range("FAL_CALLBACK_BATCH_MAX", 1, 10_000)?
                        .unwrap_or(defaults.max_callbacks),
                    committers: env
                        .parse_range("FAL_CALLBACK_COMMITTERS", 1, 64)?
                        .unwrap_or(defaults.committers),
                    wait: env
                        .parse_range("FAL_CALLBACK_BATCH_WAIT", 0, 100_000)?
                        .map(Duration::from_micros)
                        .unwrap_or(defaults.wait),
                }
            },
            retention: retention(&env)?,
            janitor_interval: env
                .seconds("JANITOR_INTERVAL", 1, 24 * 3600)?
                .unwrap_or(Duration::from_secs(60)),
            webhook_allow_loopback: env.boolean("WEBHOOK_ALLOW_LOOPBACK")?,
            secrets_keys: match env.string("SECRETS_KEYS") {
                None => None,
                // The problem never repeats the value: it holds keys.
                Some(text) => Some(std::sync::Arc::new(
                    crate::secrets::KeyRing::parse(&text).map_err(|error| ConfigError {
                        variable: "SECRETS_KEYS",
                        problem: format!(
                            "{error} (expected `id:base64key,...`, the first key primary)"
                        ),
                    })?,
                )),
            },
            fal: FalSettings {
                key: env.secret("FAL_KEY"),
                webhook_user_id: env
                    .string("FAL_WEBHOOK_USER_ID")
                    .map(|v| v.trim().to_string()),
                queue_url: env
                    .url("FAL_QUEUE_URL")?
                    .unwrap_or_else(|| "https://queue.fal.run".into()),
                rest_url: env
                    .url("FAL_REST_URL")?
                    .unwrap_or_else(|| "https://rest.fal.ai".into()),
                cdn_url: env
                    .url("FAL_CDN_URL")?
                    .unwrap_or_else(|| "https://v3.fal.media".into()),
                jwks_url: env
                    .url("FAL_JWKS_URL")?
                    .unwrap_or_else(|| "https://rest.fal.ai/.well-known/jwks.json".into()),
                portrait: PortraitOverrides {
                    steps: env.parse_range("FAL_PORTRAIT_STEPS", 1, 10_000)?,
                    learning_rate: env.parse_with(
                        "FAL_PORTRAIT_LEARNING_RATE",
                        "a positive number below 1, such as 0.0002",
                        |v| v.parse::<f64>().ok().filter(|lr| *lr > 0.0 && *lr < 1.0),
                    )?,
                    subject_crop: env.boolean("FAL_PORTRAIT_SUBJECT_CROP")?,
                    create_masks: env.boolean("FAL_PORTRAIT_CREATE_MASKS")?,
                    multiresolution: env.boolean("FAL_PORTRAIT_MULTIRESOLUTION")?,
                },
                training_timeout: env
                    .seconds("FAL_TRAINING_TIMEOUT", 60, 7 * 24 * 3600)?
                    .unwrap_or(Duration::from_secs(1800)),
                status_check_interval: env
                    .seconds("FAL_STATUS_CHECK_INTERVAL", 1, 3600)?
                    .unwrap_or(Duration::from_secs(30)),
                status_check_max_interval: env
                    .seconds("FAL_STATUS_CHECK_MAX_INTERVAL", 1, 24 * 3600)?
                    .unwrap_or(Duration::from_secs(600)),
                webhook_grace: env
                    .seconds("FAL_WEBHOOK_GRACE", 0, 24 * 3600)?
                    .unwrap_or(Duration::from_secs(120)),
                deadline_factor: env.parse_range("FAL_DEADLINE_FACTOR", 1, 10)?.unwrap_or(2),
                max_retries: env.parse_range("FAL_MAX_RETRIES", 0, 10)?.unwrap_or(3),
                auto_model_selection: env.boolean("FAL_AUTO_MODEL_SELECTION")?.unwrap_or(true),
                trainer_by_kind: env
                    .parse_with(
                        "FAL_TRAINER_BY_KIND",
                        "comma-separated kind=trainer pairs, e.g. style=fast_lora,product=pro",
                        |v| {
                            v.split(',')
                                .map(|pair| {
                                    let (kind, trainer) = pair.split_once('=')?;
                                    Some((
                                        domain::AvatarKind::parse(kind.trim())?,
                                        domain::Trainer::parse(trainer.trim())?,
                                    ))
                                })
                                .collect::<Option<Vec<_>>>()
                        },
                    )?
                    .unwrap_or_default(),
                prices: {
                    let defaults = domain::TrainingPrices::default();
                    let price = |name: &'static str| {
                        env.parse_with(name, "a price in USD such as 0.0024", |v| {
                            v.parse::<f64>().ok().filter(|p| *p >= 0.0 && p.is_finite())
                        })
                    };
                    domain::TrainingPrices {
                        portrait_per_step_usd: price("PRICE_PORTRAIT_PER_STEP_USD")?
                            .unwrap_or(defaults.portrait_per_step_usd),
                        portrait_min_billed_steps: env
                            .parse_range("PRICE_PORTRAIT_MIN_BILLED_STEPS", 0, 100_000)?
                            .unwrap_or(defaults.portrait_min_billed_steps),
                        fast_lora_per_run_usd: price("PRICE_FAST_LORA_PER_RUN_USD")?
                            .unwrap_or(defaults.fast_lora_per_run_usd),
                        pro_per_run_usd: price("PRICE_PRO_PER_RUN_USD")?
                            .or(defaults.pro_per_run_usd),
                    }
                },
            },
        })
    }
}

/// The retention horizons (a minute to ten years), the batches and the blob retry schedule.
fn retention(env: &Env<'_>) -> Result<RetentionSettings, ConfigError> {
    const MOST: u64 = 10 * 365 * 24 * 3600;
    let defaults = RetentionSettings::default();
    let horizon = |name: &'static str, default: Duration| {
        Ok::<_, ConfigError>(env.seconds(name, 60, MOST)?.unwrap_or(default))
    };
    let delivered_events = horizon("RETENTION_DELIVERED_EVENTS", defaults.delivered_events)?;
    let failed_events = horizon(
        "RETENTION_FAILED_EVENTS",
        defaults.failed_events.max(delivered_events),
    )?;
    require(
        failed_events >= delivered_events,
        "RETENTION_FAILED_EVENTS",
        || {
            format!(
                "must be at least RETENTION_DELIVERED_EVENTS ({} s), got {} s",
                delivered_events.as_secs(),
                failed_events.as_secs()
            )
        },
    )?;
    let blob_retry_base = env
        .seconds("BLOB_DELETE_RETRY_BASE", 1, 24 * 3600)?
        .unwrap_or(defaults.blob_retry_base);
    let blob_retry_max = env
        .seconds("BLOB_DELETE_RETRY_MAX", 1, 7 * 24 * 3600)?
        .unwrap_or(defaults.blob_retry_max.max(blob_retry_base));
    require(
        blob_retry_max >= blob_retry_base,
        "BLOB_DELETE_RETRY_MAX",
        || {
            format!(
                "must be at least BLOB_DELETE_RETRY_BASE ({} s), got {} s",
                blob_retry_base.as_secs(),
                blob_retry_max.as_secs()
            )
        },
    )?;
    Ok(RetentionSettings {
        delivered_events,
        failed_events,
        fal_callbacks: horizon("RETENTION_FAL_CALLBACKS", defaults.fal_callbacks)?,
        idempotency_keys: horizon("RETENTION_IDEMPOTENCY_KEYS", defaults.idempotency_keys)?,
        job_events: horizon("RETENTION_JOB_EVENTS", defaults.job_events)?,
        expired_secrets: horizon("RETENTION_EXPIRED_SECRETS", defaults.expired_secrets)?,
        batch_rows: env
            .parse_range("RETENTION_BATCH_ROWS", 1, 100_000)?
            .unwrap_or(defaults.batch_rows),
        lock_timeout: env
            .seconds("RETENTION_LOCK_TIMEOUT", 1, 60)?
            .unwrap_or(defaults.lock_timeout),
        blob_retry_base,
        blob_retry_max,
        // At least an hour: a scratch file in use lives for one request or one submit.
        scratch_files: env
            .seconds("RETENTION_SCRATCH_FILES", 3600, 30 * 24 * 3600)?
            .unwrap_or(defaults.scratch_files),
    })
}

/// The S3 variables, checked together: a key id needs its secret, and an `http://` endpoint
/// needs `AWS_ALLOW_HTTP` (plain http is for a local or test server only).
fn s3_options(env: &Env<'_>) -> Result<store::S3Options, ConfigError> {
    let endpoint = env.url("AWS_ENDPOINT_URL")?;
    let allow_http = env.boolean("AWS_ALLOW_HTTP")?.unwrap_or(false);
    let virtual_hosted_style = env
        .parse_with("S3_ADDRESSING_STYLE", "`path` or `virtual`", |v| match v {
            "path" => Some(false),
            "virtual" => Some(true),
            _ => None,
        })?
        .unwrap_or(false);
    let access_key_id = env.string("AWS_ACCESS_KEY_ID");
    let secret_access_key = env.secret("AWS_SECRET_ACCESS_KEY");
    match (&access_key_id, &secret_access_key) {
        (Some(_), None) => {
            return Err(ConfigError {
                variable: "AWS_SECRET_ACCESS_KEY",
                problem: "required when AWS_ACCESS_KEY_ID is set".into(),
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError {
                variable: "AWS_ACCESS_KEY_ID",
                problem: "required when AWS_SECRET_ACCESS_KEY is set".into(),
            })
        }
        _ => {}
    }
    if !allow_http
        && endpoint
            .as_deref()
            .is_some_and(|url| url.starts_with("http://"))
        && env
            .string("STORAGE_URL")
            .is_some_and(|url| url.starts_with("s3://"))
    {
        return Err(ConfigError {
            variable: "AWS_ALLOW_HTTP",
            problem: "AWS_ENDPOINT_URL is plain http; set AWS_ALLOW_HTTP=true to allow it \
                (a local or test server only)"
                .into(),
        });
    }
    Ok(store::S3Options {
        endpoint,
        region: env.string("AWS_REGION"),
        access_key_id,
        secret_access_key,
        session_token: env.secret("AWS_SESSION_TOKEN"),
        virtual_hosted_style,
        allow_http,
    })
}

/// `Ok` when a rule between settings `holds`, else the error naming `variable`.
fn require(
    holds: bool,
    variable: &'static str,
    problem: impl FnOnce() -> String,
) -> Result<(), ConfigError> {
    if holds {
        Ok(())
    } else {
        Err(ConfigError {
            variable,
            problem: problem(),
        })
    }
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    /// The value, with empty treated as unset (as shells and compose files often leave it).
    fn string(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    fn secret(&self, name: &str) -> Option<SecretString> {
        self.string(name).map(SecretString::from)
    }

    fn parse_with<T>(
        &self,
        name: &'static str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.string(name) {
            None => Ok(None),
            Some(raw) => parse(raw.trim()).map(Some).ok_or_else(|| ConfigError {
                variable: name,
                problem: format!("expected {expected}, got {raw:?}"),
            }),
        }
    }

    fn parse_range<T>(&self, name: &'static str, min: T, max: T) -> Result<Option<T>, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        self.parse_with(name, &format!("a whole number from {min} to {max}"), |v| {
            v.parse::<T>().ok().filter(|n| *n >= min && *n <= max)
        })
    }

    fn seconds(
        &self,
        name: &'static str,
        min: u64,
        max: u64,
    ) -> Result<Option<Duration>, ConfigError> {
        Ok(self
            .parse_with(
                name,
                &format!("a number of seconds from {min} to {max}"),
                |v| v.parse::<u64>().ok().filter(|n| *n >= min && *n <= max),
            )?
            .map(Duration::from_secs))
    }

    /// Like [`Env::seconds`], where zero is allowed.
    fn seconds_from_zero(
        &self,
        name: &'static str,
        max: u64,
    ) -> Result<Option<Duration>, ConfigError> {
        Ok(self.parse_range(name, 0, max)?.map(Duration::from_secs))
    }

    fn boolean(&self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        self.parse_with(name, "true or false", |v| {
            match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                _ => None,
            }
        })
    }

    fn url(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        self.parse_with(name, "an http:// or https:// URL", |v| {
            let rest = v
                .strip_prefix("https://")
                .or_else(|| v.strip_prefix("http://"))?;
            (!rest.is_empty() && !rest.starts_with('/')).then(|| v.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    /// Asserts that each `(variable, value)` alone is refused, naming its variable.
    fn assert_refused(refused: &[(&str, &str)]) {
        for &(name, value) in refused {
            let error = config(&[(name, value)]).unwrap_err();
            assert_eq!(error.variable, name, "{name}={value}");
        }
    }

    /// Asserts that without variables `pick` finds the defaults, and that `vars` are read
    /// into `expected`.
    fn assert_read<T: PartialEq + std::fmt::Debug + Default>(
        pick: impl Fn(Config) -> T,
        vars: &[(&str, &str)],
        expected: T,
    ) {
        assert_eq!(pick(config(&[]).unwrap()), T::default());
        assert_eq!(pick(config(vars).unwrap()), expected);
    }

    #[test]
    fn the_variable_list_names_exactly_what_is_read() {
        let read = std::sync::Mutex::new(Vec::<String>::new());
        Config::from_lookup(|name| {
            read.lock().unwrap().push(name.to_string());
            None
        })
        .unwrap();
        let mut read = read.into_inner().unwrap();
        read.sort();
        read.dedup();
        let mut listed: Vec<String> = Config::VARIABLES.iter().map(|v| v.to_string()).collect();
        listed.sort();
        let before = listed.len();
        listed.dedup();
        assert_eq!(before, listed.len(), "Config::VARIABLES lists a name twice");
        assert_eq!(
            read, listed,
            "Config::VARIABLES differs from what from_lookup reads"
        );
    }

    #[test]
    fn webhook_loopback_is_left_to_the_mode_unless_set() {
        assert_eq!(config(&[]).unwrap().webhook_allow_loopback, None);
        assert_eq!(
            config(&[("WEBHOOK_ALLOW_LOOPBACK", "true")])
                .unwrap()
                .webhook_allow_loopback,
            Some(true)
        );
        assert_eq!(
            config(&[("WEBHOOK_ALLOW_LOOPBACK", "false")])
                .unwrap()
                .webhook_allow_loopback,
            Some(false)
        );
        assert_eq!(
            config(&[("WEBHOOK_ALLOW_LOOPBACK", "sometimes")])
                .unwrap_err()
                .variable,
            "WEBHOOK_ALLOW_LOOPBACK"
        );
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = config(&[]).unwrap();
        assert!(config.database_url.is_none());
        assert_eq!(config.bind_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(config.fal.training_timeout, Duration::from_secs(1800));
        assert_eq!(config.fal.status_check_interval, Duration::from_secs(30));
        assert_eq!(
            config.fal.status_check_max_interval,
            Duration::from_secs(600)
        );
        assert_eq!(config.fal.webhook_grace, Duration::from_secs(120));
        assert_eq!(config.fal.deadline_factor, 2);
        assert_eq!(config.fal.max_retries, 3);
        assert!(config.fal.auto_model_selection);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.generation_max_prompts, 10);
        let config = super::Config::from_lookup(|name| {
            (name == "GENERATION_MAX_PROMPTS").then(|| "3".to_string())
        })
        .unwrap();
        assert_eq!(config.generation_max_prompts, 3);
    }

    #[test]
    fn trace_export_is_off_unless_an_endpoint_is_set() {
        let defaults = config(&[]).unwrap().traces;
        assert_eq!(defaults.otlp_endpoint, None);
        assert_eq!(defaults.service_name, "avatars");
        assert_eq!(defaults.schedule_delay, Duration::from_secs(5));
        let set = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_SERVICE_NAME", "avatars-eu"),
            ("OTEL_BSP_SCHEDULE_DELAY", "1"),
        ])
        .unwrap()
        .traces;
        assert_eq!(set.otlp_endpoint.as_deref(), Some("http://collector:4318"));
        assert_eq!(set.service_name, "avatars-eu");
        assert_eq!(set.schedule_delay, Duration::from_millis(1));
        assert_eq!(
            config(&[("OTEL_BSP_SCHEDULE_DELAY", "60000")])
                .unwrap()
                .traces
                .schedule_delay,
            Duration::from_secs(60)
        );
        assert_refused(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "60001"),
        ]);
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (name, value) in [
            ("BIND_ADDR", "localhost"),
            ("FAL_MAX_RETRIES", "eleven"),
            ("FAL_MAX_RETRIES", "11"),
            ("FAL_TRAINING_TIMEOUT", "-5"),
            ("FAL_DEADLINE_FACTOR", "0"),
            ("FAL_DEADLINE_FACTOR", "11"),
            ("FAL_WEBHOOK_GRACE", "soon"),
            ("FAL_STATUS_CHECK_MAX_INTERVAL", "0"),
            ("FAL_AUTO_MODEL_SELECTION", "maybe"),
            ("FAL_PORTRAIT_LEARNING_RATE", "2"),
            ("FAL_QUEUE_URL", "ftp://x"),
            ("LOG_FORMAT", "xml"),
            ("AVATAR_MIN_PHOTOS", "0"),
            ("PHOTO_MAX_BYTES", "lots"),
            ("FETCH_ALLOWED_PRIVATE", "127.0.0.1"),
            ("FAL_TRAINER_BY_KIND", "style=robot"),
            ("PHOTO_FACE_POLICY", "character=maybe"),
            ("PHOTO_FACE_POLICY", "person=off"),
            ("PRICE_FAST_LORA_PER_RUN_USD", "-1"),
            ("GENERATION_MAX_PROMPTS", "0"),
            ("API_KEY_RATE_PER_SECOND", "0"),
            ("API_KEY_CACHE_TTL", "3601"),
            ("API_KEY_CACHE_TTL", "-1"),
            ("API_KEY_CACHE_MAX_ENTRIES", "0"),
            ("API_KEY_CACHE_MAX_ENTRIES", "1000001"),
            ("TENANT_MAX_WEBHOOK_ENDPOINTS", "0"),
            ("TENANT_MAX_EVENT_STREAMS", "many"),
            ("USAGE_MAX_RANGE_DAYS", "0"),
            ("WEBHOOK_DISABLE_AFTER", "0"),
            ("WEBHOOK_CONCURRENCY", "0"),
        ] {
            let error = config(&[(name, value)]).unwrap_err();
            assert_eq!(error.variable, name);
            assert!(error
                .to_string()
                .starts_with(&format!("invalid configuration: {name}: expected")));
        }
    }

    #[test]
    fn api_key_cache_limits_are_read_at_their_edges() {
        assert_read(
            |config| config.api_key_cache,
            &[
                ("API_KEY_CACHE_TTL", "0"),
                ("API_KEY_CACHE_MAX_ENTRIES", "1"),
            ],
            store::KeyCacheSettings {
                ttl: Duration::ZERO,
                max_entries: 1,
            },
        );
        assert_read(
            |config| config.api_key_cache,
            &[
                ("API_KEY_CACHE_TTL", "3600"),
                ("API_KEY_CACHE_MAX_ENTRIES", "1000000"),
            ],
            store::KeyCacheSettings {
                ttl: Duration::from_secs(3600),
                max_entries: 1_000_000,
            },
        );
    }

    #[test]
    fn server_timing_is_off_unless_asked_for() {
        assert_read(
            |config| config.http.server_timing,
            &[("SERVER_TIMING", "true")],
            true,
        );
        assert_refused(&[("SERVER_TIMING", "sometimes")]);
    }

    #[test]
    fn database_pool_settings_are_read_and_bounded() {
        let defaults = config(&[]).unwrap().database;
        assert_eq!(defaults, store::PoolSettings::default());
        assert_eq!(defaults.acquire_timeout, Duration::from_secs(3));
        let set = config(&[
            ("DATABASE_MAX_CONNECTIONS", "7"),
            ("DATABASE_ACQUIRE_TIMEOUT", "1"),
            ("DATABASE_STATEMENT_TIMEOUT", "5"),
            ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "9"),
        ])
        .unwrap();
        assert_eq!(
            set.database,
            store::PoolSettings {
                max_connections: 7,
                acquire_timeout: Duration::from_secs(1),
                statement_timeout: Duration::from_secs(5),
                idle_in_transaction_timeout: Duration::from_secs(9),
            }
        );
        assert_eq!(set.database_max_connections, 7);
        assert_refused(&[
            ("DATABASE_ACQUIRE_TIMEOUT", "4"),
            ("DATABASE_ACQUIRE_TIMEOUT", "0"),
            ("DATABASE_STATEMENT_TIMEOUT", "0"),
            ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "soon"),
        ]);
    }

    #[test]
    fn unknown_callback_limits_are_read_and_bounded() {
        assert_read(
            |config| config.unknown_callbacks,
            &[
                ("FAL_UNKNOWN_CALLBACK_MAX_BYTES", "0"),
                ("FAL_UNKNOWN_CALLBACKS_MAX", "5"),
                ("FAL_UNKNOWN_CALLBACK_RETENTION", "3600"),
            ],
            UnknownCallbackSettings {
                max_body_bytes: 0,
                max_kept: 5,
                retention: Duration::from_secs(3600),
            },
        );
        assert_refused(&[
            ("FAL_UNKNOWN_CALLBACK_MAX_BYTES", "2000000"),
            ("FAL_UNKNOWN_CALLBACKS_MAX", "-1"),
            ("FAL_UNKNOWN_CALLBACK_RETENTION", "59"),
        ]);
    }

    #[test]
    fn callback_batches_are_read_and_bounded() {
        assert_read(
            |config| config.callback_batches,
            &[
                ("FAL_CALLBACK_BATCH_MAX", "1"),
                ("FAL_CALLBACK_COMMITTERS", "64"),
                ("FAL_CALLBACK_BATCH_WAIT", "0"),
            ],
            CallbackBatchSettings {
                max_callbacks: 1,
                committers: 64,
                wait: Duration::ZERO,
            },
        );
        assert_eq!(
            config(&[("FAL_CALLBACK_BATCH_WAIT", "100000")])
                .unwrap()
                .callback_batches
                .wait,
            Duration::from_millis(100)
        );
        assert_refused(&[
            ("FAL_CALLBACK_BATCH_WAIT", "100001"),
            ("FAL_CALLBACK_BATCH_MAX", "0"),
            ("FAL_CALLBACK_BATCH_MAX", "10001"),
            ("FAL_CALLBACK_COMMITTERS", "0"),
            ("FAL_CALLBACK_COMMITTERS", "65"),
        ]);
    }

    #[test]
    fn retention_is_read_and_bounded() {
        let defaults = config(&[]).unwrap();
        assert_eq!(defaults.retention, RetentionSettings::default());
        assert_eq!(defaults.retention.batch_rows, 1000);
        assert_eq!(defaults.janitor_interval, Duration::from_secs(60));
        let set = config(&[
            ("RETENTION_DELIVERED_EVENTS", "60"),
            ("RETENTION_FAILED_EVENTS", "120"),
            ("RETENTION_FAL_CALLBACKS", "3600"),
            ("RETENTION_IDEMPOTENCY_KEYS", "7200"),
            ("RETENTION_JOB_EVENTS", "86400"),
            ("RETENTION_EXPIRED_SECRETS", "600"),
            ("RETENTION_BATCH_ROWS", "1"),
            ("RETENTION_LOCK_TIMEOUT", "60"),
            ("BLOB_DELETE_RETRY_BASE", "1"),
            ("BLOB_DELETE_RETRY_MAX", "1"),
            ("JANITOR_INTERVAL", "5"),
            ("RETENTION_SCRATCH_FILES", "3600"),
        ])
        .unwrap();
        assert_eq!(
            set.retention,
            RetentionSettings {
                delivered_events: Duration::from_secs(60),
                failed_events: Duration::from_secs(120),
                fal_callbacks: Duration::from_secs(3600),
                idempotency_keys: Duration::from_secs(7200),
                job_events: Duration::from_secs(86400),
                expired_secrets: Duration::from_secs(600),
                batch_rows: 1,
                lock_timeout: Duration::from_secs(60),
                blob_retry_base: Duration::from_secs(1),
                blob_retry_max: Duration::from_secs(1),
                scratch_files: Duration::from_secs(3600),
            }
        );
        assert_eq!(set.janitor_interval, Duration::from_secs(5));
        // A long delivered horizon raises the failed one's default with it.
        let long = config(&[("RETENTION_DELIVERED_EVENTS", "31536000")]).unwrap();
        assert_eq!(
            long.retention.failed_events,
            Duration::from_secs(31_536_000)
        );
        for (vars, variable) in [
            (
                vec![("RETENTION_DELIVERED_EVENTS", "59")],
                "RETENTION_DELIVERED_EVENTS",
            ),
            (
                vec![("RETENTION_JOB_EVENTS", "315360001")],
                "RETENTION_JOB_EVENTS",
            ),
            (
                vec![("RETENTION_IDEMPOTENCY_KEYS", "a day")],
                "RETENTION_IDEMPOTENCY_KEYS",
            ),
            (vec![("RETENTION_BATCH_ROWS", "0")], "RETENTION_BATCH_ROWS"),
            (
                vec![("RETENTION_BATCH_ROWS", "100001")],
                "RETENTION_BATCH_ROWS",
            ),
            (
                vec![("RETENTION_LOCK_TIMEOUT", "0")],
                "RETENTION_LOCK_TIMEOUT",
            ),
            (vec![("JANITOR_INTERVAL", "0")], "JANITOR_INTERVAL"),
            (
                vec![("RETENTION_SCRATCH_FILES", "3599")],
                "RETENTION_SCRATCH_FILES",
            ),
            (
                vec![("RETENTION_SCRATCH_FILES", "2592001")],
                "RETENTION_SCRATCH_FILES",
            ),
            (
                vec![
                    ("RETENTION_DELIVERED_EVENTS", "7200"),
                    ("RETENTION_FAILED_EVENTS", "3600"),
                ],
                "RETENTION_FAILED_EVENTS",
            ),
            (
                vec![
                    ("BLOB_DELETE_RETRY_BASE", "60"),
                    ("BLOB_DELETE_RETRY_MAX", "59"),
                ],
                "BLOB_DELETE_RETRY_MAX",
            ),
        ] {
            assert_eq!(config(&vars).unwrap_err().variable, variable, "{vars:?}");
        }
    }

    #[test]
    fn a_pool_too_small_for_the_workers_is_refused_at_start_up() {
        for small in ["1", "2", "6"] {
            let error = config(&[("DATABASE_MAX_CONNECTIONS", small)]).unwrap_err();
            assert_eq!(error.variable, "DATABASE_MAX_CONNECTIONS");
            assert!(error.problem.contains("must be at least 7"), "{error}");
        }
        let least = config(&[("DATABASE_MAX_CONNECTIONS", "7")]).unwrap();
        assert_eq!(least.database.max_connections, 7);
    }

    #[test]
    fn face_policy_is_set_per_kind() {
        let defaults = config(&[]).unwrap().photos.face_policy;
        assert_eq!(
            defaults.for_kind(domain::AvatarKind::Character),
            domain::FacePolicy::Require
        );
        assert_eq!(
            defaults.for_kind(domain::AvatarKind::Product),
            domain::FacePolicy::Off
        );
        let set = config(&[("PHOTO_FACE_POLICY", "character=warn, style=require")])
            .unwrap()
            .photos
            .face_policy;
        assert_eq!(
            set.for_kind(domain::AvatarKind::Character),
            domain::FacePolicy::Warn
        );
        assert_eq!(
            set.for_kind(domain::AvatarKind::Style),
            domain::FacePolicy::Require
        );
        assert_eq!(
            set.for_kind(domain::AvatarKind::General),
            domain::FacePolicy::Off
        );
    }

    #[test]
    fn photo_limits_must_be_consistent() {
        let error =
            config(&[("AVATAR_MIN_PHOTOS", "15"), ("AVATAR_MAX_PHOTOS", "12")]).unwrap_err();
        assert_eq!(error.variable, "AVATAR_MAX_PHOTOS");
        let ok = config(&[("AVATAR_MIN_PHOTOS", "4"), ("AVATAR_MAX_PHOTOS", "8")]).unwrap();
        assert_eq!((ok.photos.min_photos, ok.photos.max_photos), (4, 8));
    }

    #[test]
    fn tenant_slots_fit_in_the_relay() {
        let error =
            config(&[("WEBHOOK_CONCURRENCY", "4"), ("WEBHOOK_TENANT_SLOTS", "5")]).unwrap_err();
        assert_eq!(error.variable, "WEBHOOK_TENANT_SLOTS");
        let small = config(&[("WEBHOOK_CONCURRENCY", "2")]).unwrap();
        assert_eq!(small.events.relay_tenant_slots, 2);
        let defaults = config(&[]).unwrap();
        assert_eq!(defaults.tenants.max_webhook_endpoints, 10);
        assert_eq!(
            defaults.events.disable_after,
            Duration::from_secs(5 * 24 * 3600)
        );
    }

    #[test]
    fn intake_limits_are_read_and_checked() {
        let defaults = config(&[]).unwrap();
        assert_eq!(defaults.photos.max_parts, 100);
        assert_eq!(defaults.photos.decode_budget_pixels, 50_000_000);
        let set = config(&[
            ("PHOTO_MAX_PARTS", "30"),
            ("PHOTO_DECODE_BUDGET_PIXELS", "1000000"),
            ("PHOTO_CHECK_THREADS", "1"),
        ])
        .unwrap();
        assert_eq!(
            (
                set.photos.max_parts,
                set.photos.decode_budget_pixels,
                set.photos.check_threads
            ),
            (30, 1_000_000, 1)
        );
        assert_eq!(
            config(&[("PHOTO_CHECK_THREADS", "256")])
                .unwrap()
                .photos
                .check_threads,
            256
        );
        let error = config(&[("AVATAR_MAX_PHOTOS", "40"), ("PHOTO_MAX_PARTS", "39")]).unwrap_err();
        assert_eq!(error.variable, "PHOTO_MAX_PARTS");
        assert_refused(&[
            ("PHOTO_MAX_PARTS", "0"),
            ("PHOTO_DECODE_BUDGET_PIXELS", "999999"),
            ("PHOTO_CHECK_THREADS", "0"),
            ("PHOTO_CHECK_THREADS", "257"),
            ("PHOTO_DECODE_BUDGET_PIXELS", "5000000000"),
        ]);
    }

    #[test]
    fn seed_settings_are_read() {
        let config = config(&[
            ("FAL_PORTRAIT_STEPS", "1200"),
            ("FAL_PORTRAIT_CREATE_MASKS", "false"),
            ("FAL_AUTO_MODEL_SELECTION", "0"),
            ("FAL_KEY", "id:secret"),
        ])
        .unwrap();
        assert_eq!(config.fal.portrait.steps, Some(1200));
        assert_eq!(config.fal.portrait.create_masks, Some(false));
        assert!(!config.fal.auto_model_selection);
        assert_eq!(
            config.fal.key.as_ref().unwrap().expose_secret(),
            "id:secret"
        );
    }

    #[test]
    fn s3_is_configured_explicitly() {
        let s3 = |vars: &[(&str, &str)]| {
            let mut all = vec![("STORAGE_URL", "s3://bucket/prefix")];
            all.extend_from_slice(vars);
            config(&all)
        };
        let defaults = s3(&[]).unwrap().s3;
        assert_eq!(defaults.endpoint, None);
        assert!(!defaults.virtual_hosted_style && !defaults.allow_http);

        let local = s3(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "s3-secret-value"),
            ("S3_ADDRESSING_STYLE", "path"),
            ("AWS_ALLOW_HTTP", "true"),
        ])
        .unwrap();
        assert_eq!(local.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(local.s3.region.as_deref(), Some("eu-west-1"));
        assert_eq!(local.s3.access_key_id.as_deref(), Some("AKIAEXAMPLE"));
        assert_eq!(
            local.s3.secret_access_key.as_ref().unwrap().expose_secret(),
            "s3-secret-value"
        );
        assert!(!format!("{local:?}").contains("s3-secret-value"));
        assert!(
            s3(&[("S3_ADDRESSING_STYLE", "virtual")])
                .unwrap()
                .s3
                .virtual_hosted_style
        );

        let variable = |vars: &[(&str, &str)]| s3(vars).unwrap_err().variable;
        assert_eq!(
            variable(&[("S3_ADDRESSING_STYLE", "vhost")]),
            "S3_ADDRESSING_STYLE"
        );
        assert_eq!(variable(&[("AWS_ALLOW_HTTP", "maybe")]), "AWS_ALLOW_HTTP");
        assert_eq!(
            variable(&[("AWS_ENDPOINT_URL", "minio:9000")]),
            "AWS_ENDPOINT_URL"
        );
        assert_eq!(
            variable(&[("AWS_ENDPOINT_URL", "http://minio:9000")]),
            "AWS_ALLOW_HTTP"
        );
        assert_eq!(
            variable(&[("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")]),
            "AWS_SECRET_ACCESS_KEY"
        );
        assert_eq!(
            variable(&[("AWS_SECRET_ACCESS_KEY", "s3-secret-value")]),
            "AWS_ACCESS_KEY_ID"
        );
        // A plain http endpoint matters only when the blobs are on S3.
        assert!(config(&[("AWS_ENDPOINT_URL", "http://minio:9000")]).is_ok());
    }

    #[test]
    fn the_job_lease_is_configurable_within_bounds() {
        assert_eq!(config(&[]).unwrap().job_lease, Duration::from_secs(600));
        let shortest = config(&[("JOB_LEASE", "5")]).unwrap();
        assert_eq!(shortest.job_lease, Duration::from_secs(5));
        assert_refused(&[
            ("JOB_LEASE", "4"),
            ("JOB_LEASE", "86401"),
            ("JOB_LEASE", "soon"),
        ]);
    }

    #[test]
    fn the_generation_timeout_is_configurable_within_bounds() {
        let timeout = |vars: &[(&str, &str)]| config(vars).unwrap().generation_timeout;
        assert_eq!(timeout(&[]), Duration::from_secs(600));
        assert_eq!(
            timeout(&[("GENERATION_TIMEOUT", "30")]),
            Duration::from_secs(30)
        );
        assert_refused(&[
            ("GENERATION_TIMEOUT", "29"),
            ("GENERATION_TIMEOUT", "86401"),
            ("GENERATION_TIMEOUT", "later"),
        ]);
    }

    /// Asserts the attempts and retry interval `pick` reads: their defaults, both lower edges
    /// (1 and 1 s) and both upper edges (100 and 3600 s) accepted, one past each refused.
    fn assert_attempt_bounds(
        attempts: &str,
        interval: &str,
        defaults: (u32, u64),
        pick: impl Fn(&Config) -> (u32, Duration),
    ) {
        let read = |vars: &[(&str, &str)]| pick(&config(vars).unwrap());
        let (default_attempts, default_secs) = defaults;
        let expected = (default_attempts, Duration::from_secs(default_secs));
        assert_eq!(read(&[]), expected);
        let lowest = read(&[(attempts, "1"), (interval, "1")]);
        assert_eq!(lowest, (1, Duration::from_secs(1)));
        let highest = read(&[(attempts, "100"), (interval, "3600")]);
        assert_eq!(highest, (100, Duration::from_secs(3600)));
        assert_refused(&[
            (attempts, "0"),
            (attempts, "101"),
            (attempts, "many"),
            (interval, "0"),
            (interval, "3601"),
            (interval, "soon"),
        ]);
    }

    #[test]
    fn custody_attempts_and_their_interval_are_configurable_within_bounds() {
        assert_attempt_bounds(
            "CUSTODY_MAX_ATTEMPTS",
            "CUSTODY_RETRY_INTERVAL",
            (8, 10),
            |c| (c.custody_max_attempts, c.custody_retry_interval),
        );
    }

    #[test]
    fn cancel_attempts_and_their_interval_are_configurable_within_bounds() {
        assert_attempt_bounds(
            "CANCEL_MAX_ATTEMPTS",
            "CANCEL_RETRY_INTERVAL",
            (8, 10),
            |c| (c.cancel_max_attempts, c.cancel_retry_interval),
        );
    }

    #[test]
    fn secrets_never_print() {
        let ring_key = "c2VjcmV0LWtleS1ieXRlcy1mb3ItdGhlLXJpbmctMDE=";
        let config = config(&[
            ("FAL_KEY", "fal-secret-value"),
            ("DATABASE_URL", "postgres://u:db-password@h/d"),
            ("SECRETS_KEYS", &format!("k1:{ring_key}")),
        ])
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("fal-secret-value"));
        assert!(!printed.contains("db-password"));
        assert!(!printed.contains(ring_key));
        assert!(printed.contains("k1"));
    }

    #[test]
    fn the_key_ring_is_read_primary_first_and_never_echoed() {
        assert!(config(&[]).unwrap().secrets_keys.is_none());
        let (k2, k1) = (
            "MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjI=",
            "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=",
        );
        let ring = config(&[("SECRETS_KEYS", &format!("k2:{k2}, k1:{k1}"))])
            .unwrap()
            .secrets_keys
            .unwrap();
        assert_eq!(ring.key_ids(), vec!["k2", "k1"]);
        let short = "c2hvcnQ=";
        let error = config(&[("SECRETS_KEYS", &format!("k2:{k2},k1:{short}"))]).unwrap_err();
        assert_eq!(error.variable, "SECRETS_KEYS");
        assert!(
            error.problem.contains("32 random bytes"),
            "{}",
            error.problem
        );
        assert!(!error.to_string().contains(short) && !error.to_string().contains(k2));
    }
}
