use chrono::{DateTime, Utc};
use domain::TenantId;

use crate::{Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: uuid::Uuid,
    name: String,
    created_at: DateTime<Utc>,
}

impl From<TenantRow> for Tenant {
    fn from(row: TenantRow) -> Self {
        Tenant {
            id: TenantId(row.id),
            name: row.name,
            created_at: row.created_at,
        }
    }
}

impl Store {
    /// Returns the tenant called `name`, creating it when it does not exist yet.
    pub async fn ensure_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        // The no-op update makes RETURNING yield the existing row on conflict, in one statement.
        let row: TenantRow = sqlx::query_as(
            "INSERT INTO tenants (id, name) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
             RETURNING id, name, created_at",
        )
        .bind(TenantId::new().0)
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.into())
    }

    pub async fn find_tenant_by_name(&self, name: &str) -> Result<Tenant, StoreError> {
        let row: Option<TenantRow> =
            sqlx::query_as("SELECT id, name, created_at FROM tenants WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        row.map(Into::into).ok_or(StoreError::NotFound)
    }
}

/// What a tenant may hold only so many of at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Trainings not yet finished.
    ActiveTrainings,
    /// Generations with an item not yet finished.
    ActiveGenerations,
    WebhookEndpoints,
}

impl Quota {
    fn count_sql(self) -> &'static str {
        match self {
            Quota::ActiveTrainings => {
                "SELECT count(*) FROM jobs WHERE tenant_id = $1 AND kind = 'training'
                 AND status IN ('pending', 'uploading', 'submitted', 'in_progress', 'submit_unknown')"
            }
            Quota::ActiveGenerations => {
                "SELECT count(DISTINCT generation_id) FROM jobs
                 WHERE tenant_id = $1 AND kind = 'generation'
                 AND status IN ('pending', 'uploading', 'submitted', 'in_progress', 'submit_unknown')"
            }
            Quota::WebhookEndpoints => "SELECT count(*) FROM webhook_endpoints WHERE tenant_id = $1",
        }
    }
}

/// Refuses, with [`StoreError::QuotaReached`], a creation that would take the tenant past
/// `limit`. Holds the tenant row until the transaction ends, so concurrent creations of one
/// tenant count one after another and cannot both slip under the limit.
pub(crate) async fn check_quota(
    tx: &mut sqlx::PgConnection,
    tenant_id: TenantId,
    quota: Quota,
    limit: u32,
) -> Result<(), StoreError> {
    sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
        .bind(tenant_id.0)
        .execute(&mut *tx)
        .await?;
    let held: i64 = sqlx::query_scalar(quota.count_sql())
        .bind(tenant_id.0)
        .fetch_one(&mut *tx)
        .await?;
    if held >= i64::from(limit) {
        return Err(StoreError::QuotaReached { limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Quota;

    /// The planner uses a partial index only for a condition that implies the index's own:
    /// the quota counts and `jobs_tenant_unfinished_idx` must name the same statuses, or every
    /// generation request would count through the tenant's whole history again.
    #[test]
    fn the_unfinished_jobs_index_serves_the_quota_counts() {
        let migration =
            include_str!("../../../migrations/20261130400000_unfinished_jobs_by_tenant.sql");
        for quota in [Quota::ActiveTrainings, Quota::ActiveGenerations] {
            let sql = quota.count_sql();
            let condition = &sql[sql.find("status IN").expect("a status condition")..];
            assert!(
                migration.contains(&format!("WHERE {condition};")),
                "{condition}"
            );
        }
    }
}
