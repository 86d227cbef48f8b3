//! Postgres persistence for avatars: migrations and repositories.
//!
//! Every query that reads or writes a tenant's data takes the tenant id, so one tenant can never
//! see another's rows. Queries are checked at run time (`sqlx::query_as`), and every one of them
//! is exercised by the test suite against a real PostgreSQL.

mod api_keys;
mod avatars;
pub mod blobs;
mod error;
pub mod events;
mod generations;
mod idempotency;
mod jobs;
mod leases;
mod models;
pub mod notifications;
mod photos;
mod readiness;
mod records;
mod tenants;
pub mod webhooks;

pub use api_keys::{ApiKeyRecord, AuthenticatedKey};
pub use avatars::{AvatarFilter, AvatarPatch, TRIGGER_PHRASE_CONSTRAINT};
pub use blobs::{BlobError, BlobStore};
pub use error::StoreError;
pub use generations::{NewGeneration, NewGenerationItem, GENERATION_CHANNEL};
pub use idempotency::IdempotencyClaim;
pub use jobs::{
    EventOutcome, JobChanges, NewTraining, WebhookDelivery, WebhookOutcome, ONE_ACTIVE_TRAINING,
};
pub use models::NewModel;
pub use photos::{photo_blob_key, NewPhoto, PhotoRecord, PhotoRemoval, Reservation};
pub use readiness::Readiness;
pub use records::{GenerationImage, GenerationRecord, JobRecord, ModelRecord};
pub use tenants::{Quota, Tenant};

use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

/// The schema migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// A pool that connects on first use, so the service can start (and report itself not
    /// ready) while the database is down.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // A broken connection surfaces as a query error and is replaced; pinging before
            // every acquire would cost a round trip per query.
            .test_before_acquire(false)
            .connect_lazy(url)?;
        Ok(Self::new(pool))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations (safe to run from several replicas at once: sqlx holds an
    /// advisory lock while migrating).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}
