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
