//! Postgres persistence for avatars: migrations and repositories.
//!
//! Every query that reads or writes a tenant's data takes the tenant id, so one tenant can never
//! see another's rows. Queries are checked at run time (`sqlx::query_as`), and every one of them
//! is exercised by the test suite against a real PostgreSQL.

mod api_keys;
mod avatars;
pub mod blobs;
mod callback_batch;
mod error;
pub mod events;
mod gauges;
mod generations;
mod idempotency;
mod jobs;
pub mod key_cache;
mod leases;
mod models;
pub mod notifications;
mod photos;
mod readiness;
mod records;
pub mod retention;
mod tenants;
mod transitions;
mod usage;
pub mod webhooks;

pub use api_keys::{ApiKeyRecord, AuthenticatedKey};
pub use avatars::{AvatarFilter, AvatarPatch, TRIGGER_PHRASE_CONSTRAINT};
pub use blobs::{BlobError, BlobHealth, BlobStore, S3Options, FILE_CHUNK_BYTES};
pub use callback_batch::{BatchedCallback, BatchedOutcome};
pub use error::StoreError;
pub use gauges::{TransitionObserver, WorkSnapshot};
pub use generations::{NewGeneration, NewGenerationItem, GENERATION_CHANNEL};
pub use idempotency::{IdempotencyClaim, IdempotencyHold, IdempotentResource, IDEMPOTENCY_CLAIM};
pub use jobs::{
    CancelCause, CancelOutcome, EventOutcome, JobChanges, JobWatch, NewTraining, WebhookDelivery,
    WebhookOutcome, ONE_ACTIVE_TRAINING,
};
pub use key_cache::{KeyCacheSettings, KeyCacheStats};
pub use models::NewModel;
pub use photos::{photo_blob_key, PhotoFacts, PhotoRecord, PhotoRemoval, Reservation};
pub use readiness::Readiness;
pub use records::{GenerationImage, GenerationRecord, JobRecord, ModelRecord};
pub use retention::{Trim, TrimBatches, TrimReport};
pub use tenants::{Quota, Tenant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Connection;
use std::time::Duration;

/// The schema migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// How the pool is sized and how long the database lets a connection wait or work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a caller waits for a free connection before the request is refused (503),
    /// rather than queueing behind a stuck pool until the client gives up.
    pub acquire_timeout: Duration,
    /// Longest statement the server runs before cancelling it.
    pub statement_timeout: Duration,
    /// Longest a transaction may sit idle before the server ends its session, so a stalled
    /// task cannot hold row locks indefinitely.
    pub idle_in_transaction_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(60),
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    observer: gauges::Observer,
    /// Live API keys this process checked recently; off unless [`Store::with_key_cache`].
    keys: std::sync::Arc<key_cache::KeyCache>,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            observer: gauges::Observer::default(),
            keys: key_cache::KeyCache::new(KeyCacheSettings::OFF),
        }
    }

    /// This store with a key cache of its own (see [`key_cache`]), shared by its clones. It
    /// caches only while the process listens for notifications ([`Store::listen`]).
    pub fn with_key_cache(mut self, settings: KeyCacheSettings) -> Self {
        self.keys = key_cache::KeyCache::new(settings);
        self
    }

    /// A pool that connects on first use, so the service can start (and report itself not
    /// ready) while the database is down.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_lazy_with_settings(
            url,
            &PoolSettings {
                max_connections,
                ..PoolSettings::default()
            },
        )
    }

    /// [`Store::connect_lazy`] with every pool setting given.
    pub fn connect_lazy_with_settings(
        url: &str,
        settings: &PoolSettings,
    ) -> Result<Self, StoreError> {
        Ok(Self::connect_lazy_with(url.parse()?, settings))
    }

    /// A lazily connecting pool on `options`; every connection it opens carries the
    /// settings' server-side timeouts (sent at connect, so they cost no extra round trip).
    pub fn connect_lazy_with(options: PgConnectOptions, settings: &PoolSettings) -> Self {
        let options = options.options([
            (
                "statement_timeout",
                settings.statement_timeout.as_millis().to_string(),
            ),
            (
                "idle_in_transaction_session_timeout",
                settings.idle_in_transaction_timeout.as_millis().to_string(),
            ),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // A broken connection surfaces as a query error and is replaced; pinging before
            // every acquire would cost a round trip per query.
            .test_before_acquire(false)
            .connect_lazy_with(options);
        Self::new(pool)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a transaction whose `BEGIN` runs to its end even when the caller stops waiting
    /// (a client that hangs up, a worker being stopped).
    ///
    /// sqlx (0.8) counts a transaction as open only once the server has answered `BEGIN`;
    /// a caller dropped between sending it and reading the answer hands the connection back
    /// to the pool inside a transaction that nothing ends. Whatever the connection's next
    /// users write then runs in it, is answered as done, and is lost when the connection
    /// closes (upstream: transact-rs/sqlx#4393). Run on a task of its own, the `BEGIN` is
    /// always read: an abandoned transaction is dropped like any other and rolled back before
    /// its connection is used again.
    pub(crate) async fn begin(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.begin_with("BEGIN").await
    }

    /// [`Store::begin`] for a transaction whose statements all find their rows by key, through
    /// arrays: PostgreSQL then plans each statement once per connection (a generic plan)
    /// instead of again at every execution for the lengths of its arrays. For a batch of fal
    /// callbacks that planning was a fifth of the transaction's time. The setting travels
    /// with `BEGIN` (no extra round trip) and ends with the transaction.
    pub(crate) async fn begin_planned_once(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
            .await
    }

    async fn begin_with(
        &self,
        statement: &'static str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let pool = self.pool.clone();
        #[allow(clippy::disallowed_methods)] // the one place transactions begin
        let begin = async move { pool.begin_with(statement).await };
        match tokio::spawn(begin).await {
            Ok(begun) => Ok(begun?),
            Err(stopped) => Err(StoreError::Database(sqlx::Error::Protocol(format!(
                "starting a transaction: {stopped}"
            )))),
        }
    }

    /// A one-connection pool of its own for a LISTEN connection, which is held for the life
    /// of the process: taken from the request pool it would shrink that pool for good (and
    /// a small pool would deadlock).
    pub(crate) fn listening_pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .connect_lazy_with((*self.pool.connect_options()).clone())
    }

    /// Applies pending migrations (safe to run from several replicas at once: sqlx holds an
    /// advisory lock while migrating). They run on a connection of their own without the
    /// statement timeout, since building an index on a large table may take longer than any
    /// request should.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let options = (*self.pool.connect_options())
            .clone()
            .options([("statement_timeout", "0")]);
        let mut connection = sqlx::PgConnection::connect_with(&options).await?;
        let migrated = MIGRATOR.run(&mut connection).await;
        let _ = connection.close().await;
        migrated?;
        Ok(())
    }
}
