use chrono::{DateTime, Utc};
use domain::{ApiKeyId, TenantId};

use crate::key_cache::{KeyCacheStats, Lookup};
use crate::{Store, StoreError};

/// An API key as listed to operators: never the key itself, only its prefix.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ApiKeyRecord {
    #[sqlx(try_from = "uuid::Uuid")]
    pub id: ApiKeyId,
    pub tenant_name: String,
    pub label: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Who a presented key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatedKey {
    pub key_id: ApiKeyId,
    pub tenant_id: TenantId,
}

impl Store {
    pub async fn insert_api_key(
        &self,
        tenant_id: TenantId,
        label: &str,
        prefix: &str,
        key_hash: &[u8],
    ) -> Result<ApiKeyId, StoreError> {
        let id = ApiKeyId::new();
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, label, prefix, key_hash) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.0)
        .bind(tenant_id.0)
        .bind(label)
        .bind(prefix)
        .bind(key_hash)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_write)?;
        Ok(id)
    }

    /// Finds the live (not revoked) key with this hash: from the process's key cache when
    /// it holds the key (see [`crate::key_cache`]), else from the database. Notes the key's
    /// use at most once a minute per process, so a busy key does not turn every request into
    /// a write.
    pub async fn authenticate_key(
        &self,
        key_hash: &[u8; 32],
    ) -> Result<Option<AuthenticatedKey>, StoreError> {
        let ticket = match self.keys.lookup(key_hash) {
            Lookup::Hit { key, touch } => {
                if touch {
                    self.touch_api_key(key.key_id).await?;
                }
                return Ok(Some(key));
            }
            Lookup::Miss(ticket) => ticket,
        };
        let row: Option<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
            "SELECT id, tenant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&key_hash[..])
        .fetch_optional(&self.pool)
        .await?;
        let Some((key_id, tenant_id)) = row else {
            return Ok(None);
        };
        let key = AuthenticatedKey {
            key_id: ApiKeyId(key_id),
            tenant_id: TenantId(tenant_id),
        };
        self.touch_api_key(key.key_id).await?;
        self.keys.store(ticket, *key_hash, key);
        Ok(Some(key))
    }

    /// Notes a key's use, unless it was noted in the last minute.
    async fn touch_api_key(&self, key_id: ApiKeyId) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = now()
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        )
        .bind(key_id.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How this process checked keys so far.
    pub fn key_cache_stats(&self) -> KeyCacheStats {
        self.keys.stats()
    }

    /// Every key, or a tenant's keys, newest first.
    pub async fn list_api_keys(
        &self,
        tenant_name: Option<&str>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT k.id, t.name AS tenant_name, k.label, k.prefix, k.created_at, k.revoked_at, k.last_used_at
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE $1::text IS NULL OR t.name = $1
             ORDER BY k.created_at DESC, k.id DESC",
        )
        .bind(tenant_name)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Which of these keys are still live (exist and are not revoked).
    pub async fn live_api_keys(&self, ids: &[ApiKeyId]) -> Result<Vec<ApiKeyId>, StoreError> {
        let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.0).collect();
        let live: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM api_keys WHERE id = ANY($1) AND revoked_at IS NULL")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(live.into_iter().map(ApiKeyId).collect())
    }

    /// Revokes a key. Revoking an already revoked key keeps its first revocation time. A
    /// trigger announces the revocation on [`crate::key_cache::API_KEY_CHANNEL`] in the same
    /// transaction, so every replica's key cache drops the key.
    pub async fn revoke_api_key(&self, id: ApiKeyId) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
        )
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
