//! Handing back what a stopping process holds.

use sqlx::Connection;
use uuid::Uuid;

use crate::{Store, StoreError};

impl Store {
    /// Ends every lease `owner` holds on jobs and webhook endpoints, so other replicas may
    /// claim that work at once. A job lease is ended rather than cleared: the claims read an
    /// expired lease as "its worker is gone" (an upload to redo, a submit whose outcome is
    /// unknown). Returns how many leases were handed back.
    ///
    /// It runs on a connection of its own, so handing back never queues for a free connection
    /// behind the pool's other users (whoever shares the pool, they may hold every connection
    /// for longer than the pool lets a caller wait).
    pub async fn release_leases(&self, owner: Uuid) -> Result<u64, StoreError> {
        // Bounded like a pooled connection (`DATABASE_ACQUIRE_TIMEOUT`), so an unreachable
        // server cannot hold a stopping process.
        let options = self.pool.connect_options();
        let connecting = sqlx::PgConnection::connect_with(&options);
        let mut connection =
            tokio::time::timeout(self.pool.options().get_acquire_timeout(), connecting)
                .await
                .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))??;
        let released = Self::release_leases_on(&mut connection, owner).await;
        let _ = connection.close().await;
        released
    }

    async fn release_leases_on(
        connection: &mut sqlx::PgConnection,
        owner: Uuid,
    ) -> Result<u64, StoreError> {
        let mut tx = connection.begin().await?;
        let jobs = sqlx::query(
            "UPDATE jobs SET lease_until = now() WHERE lease_owner = $1 AND lease_until > now()",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let endpoints = sqlx::query(
            "UPDATE webhook_endpoints SET relay_owner = NULL, relay_lease_until = NULL
             WHERE relay_owner = $1",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(jobs + endpoints)
    }
}
