//! Tenants' webhook endpoints, their signing secrets, and the delivery log; and the relay's side
//! of it: claiming endpoints with a lease and a fencing token, starting and finishing attempts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::delivery::{AttemptOutcome, DeliveryStatus};
use domain::TenantId;
use secrecy::SecretString;
use serde_json::Value;
use uuid::Uuid;

use crate::error::StoreError;
use crate::records::{split_page, tenant_row};
pub use crate::records::{AttemptRecord, DeliveryRecord};
use crate::Store;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct EndpointRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// `None`: every event type.
    pub event_types: Option<Vec<String>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str =
    "id, tenant_id, url, description, event_types, enabled, disabled_reason, created_at, updated_at";

#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub url: String,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub secret: NewSecret,
}

/// A signing secret to store, sealed by the caller under key `key_id` for the row `id` of its
/// endpoint.
#[derive(Debug, Clone)]
pub struct NewSecret {
    pub id: Uuid,
    pub key_id: String,
    pub sealed: Vec<u8>,
}

/// A signing secret as stored.
#[derive(Debug, Clone)]
pub enum StoredSecret {
    /// Sealed under key `key_id`: `nonce || ciphertext`.
    Sealed { key_id: String, bytes: Vec<u8> },
    /// Written before secrets were sealed; sealed by the next re-encryption.
    Legacy(SecretString),
}

/// One signing secret row.
#[derive(Debug, Clone)]
pub struct SecretRow {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub stored: StoredSecret,
}

#[derive(sqlx::FromRow)]
struct SecretColumns {
    id: Uuid,
    endpoint_id: Uuid,
    key_id: Option<String>,
    sealed: Option<Vec<u8>>,
    secret: Option<String>,
}

impl From<SecretColumns> for SecretRow {
    fn from(row: SecretColumns) -> Self {
        let stored = match (row.key_id, row.sealed) {
            (Some(key_id), Some(bytes)) => StoredSecret::Sealed { key_id, bytes },
            // The table's check makes a row without a seal hold a legacy secret.
            _ => StoredSecret::Legacy(SecretString::from(row.secret.unwrap_or_default())),
        };
        Self {
            id: row.id,
            endpoint_id: row.endpoint_id,
            stored,
        }
    }
}

const SECRET_COLUMNS: &str = "id, endpoint_id, key_id, sealed, secret";

async fn insert_secret(
    tx: &mut sqlx::PgConnection,
    endpoint_id: Uuid,
    secret: &NewSecret,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO webhook_endpoint_secrets (id, endpoint_id, key_id, sealed) VALUES ($1, $2, $3, $4)",
    )
    .bind(secret.id)
    .bind(endpoint_id)
    .bind(&secret.key_id)
    .bind(&secret.sealed)
    .execute(tx)
    .await?;
    Ok(())
}

/// A partial update; `None` leaves a field as it is. `event_types: Some(None)` subscribes to
/// every type.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub description: Option<Option<String>>,
    pub event_types: Option<Option<Vec<String>>>,
    /// `Some(false)` disables with `disabled_reason`; `Some(true)` re-enables.
    pub enabled: Option<bool>,
    pub disabled_reason: Option<String>,
}

const DELIVERY_SELECT: &str = "SELECT d.id, d.endpoint_id, d.event_id, e.event_type, d.status, \
     d.attempt_count, CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at, \
     d.last_status_code, d.created_at, d.delivered_at \
     FROM webhook_deliveries d JOIN outbox_events e ON e.id = d.event_id";

/// What became of a replay request.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOutcome {
    Replayed(DeliveryRecord),
    EndpointDisabled,
}

/// An endpoint this relay holds until its lease ends; `fence` proves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointClaim {
    pub endpoint_id: Uuid,
    pub owner: Uuid,
    pub fence: i64,
}

/// A delivery due now, with the body to send.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueDelivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub payload: Value,
    /// The W3C `traceparent` of the request that created the event's job, if any.
    pub traceparent: Option<String>,
}

/// Whether an attempt could start.
#[derive(Debug, Clone)]
pub enum AttemptStart {
    Started(StartedAttempt),
    /// Another relay holds the endpoint now, or it was disabled.
    LeaseLost,
    /// The delivery is no longer due (replayed, delivered or deleted meanwhile).
    NotDue,
}

/// An attempt this relay has started and alone may finish.
#[derive(Debug, Clone)]
pub struct StartedAttempt {
    pub delivery_id: Uuid,
    pub number: i32,
    /// 1 for the first try since the delivery was created or last replayed: where the retry
    /// schedule stands.
    pub try_number: i32,
    pub url: String,
    /// Every live signing secret, newest first.
    pub secrets: Vec<SecretRow>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub succeeded: bool,
    pub status_code: Option<u16>,
    pub latency_ms: u32,
    pub error: Option<String>,
    pub response_snippet: Option<String>,
}

/// What the delivery does next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NextStep {
    Delivered,
    RetryAt(DateTime<Utc>),
    /// Retries exhausted.
    Failed,
    /// The endpoint answered 410 Gone: the delivery fails and the endpoint is disabled.
    EndpointGone,
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

impl Store {
    pub async fn create_webhook_endpoint(
        &self,
        new: &NewEndpoint,
        max_endpoints: u32,
    ) -> Result<EndpointRecord, StoreError> {
        let mut tx = self.begin().await?;
        crate::tenants::check_quota(
            &mut tx,
            new.tenant_id,
            crate::Quota::WebhookEndpoints,
            max_endpoints,
        )
        .await?;
        let endpoint: EndpointRecord = sqlx::query_as(&format!(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types)
             VALUES ($1, $2, $3, $4, $5) RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(new.id)
        .bind(new.tenant_id.0)
        .bind(&new.url)
        .bind(&new.description)
        .bind(&new.event_types)
        .fetch_one(&mut *tx)
        .await?;
        insert_secret(&mut tx, new.id, &new.secret).await?;
        tx.commit().await?;
        Ok(endpoint)
    }

    pub async fn get_webhook_endpoint(
        &self,
        tenant_id: TenantId,
        id: Uuid,
    ) -> Result<EndpointRecord, StoreError> {
        tenant_row(
            &self.pool,
            &format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2"
            ),
            tenant_id,
            id,
        )
        .await
    }

    /// One page of a tenant's endpoints, newest first, and whether more follow.
    pub async fn list_webhook_endpoints(
        &self,
        tenant_id: TenantId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<(Vec<EndpointRecord>, bool), StoreError> {
        let rows: Vec<EndpointRecord> = sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(tenant_id.0)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(split_page(rows, limit))
    }

    pub async fn update_webhook_endpoint(
        &self,
        tenant_id: TenantId,
        id: Uuid,
        patch: &EndpointPatch,
    ) -> Result<EndpointRecord, StoreError> {
        sqlx::query_as(&format!(
            "UPDATE webhook_endpoints SET
                 url = coalesce($3, url),
                 description = CASE WHEN $4 THEN $5 ELSE description END,
                 event_types = CASE WHEN $6 THEN $7 ELSE event_types END,
                 enabled = coalesce($8, enabled),
                 disabled_reason = CASE WHEN $8 IS NULL THEN disabled_reason
                                        WHEN $8 THEN NULL ELSE $9 END,
                 failing_since = CASE WHEN $8 THEN NULL ELSE failing_since END,
                 updated_at = now()
             WHERE tenant_id = $1 AND id = $2
             RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(tenant_id.0)
        .bind(id)
        .bind(&patch.url)
        .bind(patch.description.is_some())
        .bind(patch.description.clone().flatten())
        .bind(patch.event_types.is_some())
        .bind(patch.event_types.clone().flatten())
        .bind(patch.enabled)
        .bind(&patch.disabled_reason)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// Deletes the endpoint with its secrets and delivery log.
    pub async fn delete_webhook_endpoint(
        &self,
        tenant_id: TenantId,
        id: Uuid,
    ) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id.0)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Adds `secret` as the endpoint's newest and lets the older live ones sign for `overlap`
    /// more. Returns when they stop.
    pub async fn rotate_webhook_secret(
        &self,
        tenant_id: TenantId,
        id: Uuid,
        secret: &NewSecret,
        overlap: Duration,
    ) -> Result<DateTime<Utc>, StoreError> {
        let mut tx = self.begin().await?;
        let endpoint: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        )
        .bind(tenant_id.0)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if endpoint.is_none() {
            return Err(StoreError::NotFound);
        }
        let expires_at: DateTime<Utc> =
            sqlx::query_scalar("SELECT now() + make_interval(secs => $1)")
                .bind(secs(overlap))
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(
            "UPDATE webhook_endpoint_secrets SET expires_at = $2
             WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(id)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        insert_secret(&mut tx, id, secret).await?;
        tx.commit().await?;
        Ok(expires_at)
    }

    /// One page of an endpoint's deliveries, newest first, and whether more follow.
    pub async fn list_deliveries(
        &self,
        tenant_id: TenantId,
        endpoint_id: Uuid,
        status: Option<&str>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<(Vec<DeliveryRecord>, bool), StoreError> {
        let rows: Vec<DeliveryRecord> = sqlx::query_as(&format!(
            "{DELIVERY_SELECT}
             WHERE d.tenant_id = $1 AND d.endpoint_id = $2
               AND ($3::text IS NULL OR d.status = $3)
               AND ($4::uuid IS NULL OR d.id < $4)
             ORDER BY d.id DESC LIMIT $5"
        ))
        .bind(tenant_id.0)
        .bind(endpoint_id)
        .bind(status)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(split_page(rows, limit))
    }

    pub async fn get_delivery(
        &self,
        tenant_id: TenantId,
        endpoint_id: Uuid,
        id: Uuid,
    ) -> Result<DeliveryRecord, StoreError> {
        sqlx::query_as(&format!(
            "{DELIVERY_SELECT} WHERE d.tenant_id = $1 AND d.endpoint_id = $2 AND d.id = $3"
        ))
        .bind(tenant_id.0)
        .bind(endpoint_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// The attempts of these deliveries, oldest first.
    pub async fn delivery_attempts(
        &self,
        delivery_ids: &[Uuid],
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT delivery_id, number, started_at, finished_at, outcome, status_code, latency_ms,
                 error, response_snippet
             FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, number",
        )
        .bind(delivery_ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Makes a delivery due now again, whatever became of it; it keeps its event id, so the
    /// receiver can tell it is the same event.
    pub async fn replay_delivery(
        &self,
        tenant_id: TenantId,
        endpoint_id: Uuid,
        id: Uuid,
    ) -> Result<ReplayOutcome, StoreError> {
        let enabled: Option<bool> = sqlx::query_scalar(
            "SELECT enabled FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id.0)
        .bind(endpoint_id)
        .fetch_optional(&self.pool)
        .await?;
        match enabled {
            None => return Err(StoreError::NotFound),
            Some(false) => return Ok(ReplayOutcome::EndpointDisabled),
            Some(true) => {}
        }
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(),
                 retry_base = attempt_count
             WHERE tenant_id = $1 AND endpoint_id = $2 AND id = $3",
        )
        .bind(tenant_id.0)
        .bind(endpoint_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(ReplayOutcome::Replayed(
            self.get_delivery(tenant_id, endpoint_id, id).await?,
        ))
    }

    /// Claims up to `limit` enabled endpoints with deliveries due, that no live relay holds,
    /// taking turns between tenants (every tenant's first endpoint before anyone's second) and
    /// never letting one tenant hold more than `per_tenant` of this relay's slots. The
    /// re-check of the lease in the `UPDATE` makes two relays' claims exclusive.
    pub async fn claim_endpoints(
        &self,
        owner: Uuid,
        lease: Duration,
        limit: i64,
        per_tenant: i64,
    ) -> Result<Vec<EndpointClaim>, StoreError> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "WITH held AS (
                 SELECT tenant_id, count(*) AS held FROM webhook_endpoints
                 WHERE relay_owner = $1 AND relay_lease_until > now()
                 GROUP BY tenant_id),
             candidates AS (
                 SELECT e.id, row_number() OVER (PARTITION BY e.tenant_id
                            ORDER BY e.relay_lease_until NULLS FIRST, e.id) + coalesce(h.held, 0) AS turn
                 FROM webhook_endpoints e LEFT JOIN held h ON h.tenant_id = e.tenant_id
                 WHERE e.enabled AND (e.relay_lease_until IS NULL OR e.relay_lease_until < now())
                   AND EXISTS (SELECT 1 FROM webhook_deliveries d
                               WHERE d.endpoint_id = e.id AND d.status = 'pending'
                                 AND d.next_attempt_at <= now()))
             UPDATE webhook_endpoints SET relay_owner = $1,
                 relay_lease_until = now() + make_interval(secs => $2), relay_fence = relay_fence + 1
             WHERE id IN (
                 SELECT e.id FROM webhook_endpoints e
                 WHERE e.id IN (SELECT id FROM candidates WHERE turn <= $4
                                ORDER BY turn, random() LIMIT $3)
                 FOR UPDATE SKIP LOCKED)
               AND enabled AND (relay_lease_until IS NULL OR relay_lease_until < now())
             RETURNING id, relay_fence",
        )
        .bind(owner)
        .bind(secs(lease))
        .bind(limit)
        .bind(per_tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(endpoint_id, fence)| EndpointClaim {
                endpoint_id,
                owner,
                fence,
            })
            .collect())
    }

    /// The claimed endpoint's deliveries due now, in event order.
    pub async fn due_deliveries(
        &self,
        claim: &EndpointClaim,
        limit: i64,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT d.id, d.event_id, e.payload, j.traceparent
             FROM webhook_deliveries d JOIN outbox_events e ON e.id = d.event_id
                  LEFT JOIN jobs j ON j.id = e.job_id
             WHERE d.endpoint_id = $1 AND d.status = 'pending' AND d.next_attempt_at <= now()
             ORDER BY d.event_position LIMIT $2",
        )
        .bind(claim.endpoint_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Starts the next attempt of a delivery, if this relay still holds the endpoint: extends
    /// the lease, marks an attempt left in flight by a relay that died as abandoned, and
    /// records the new attempt before anything is sent. Should this relay die now, the delivery
    /// falls due again when the lease ends. `None` when the lease was lost or the delivery is no
    /// longer due.
    pub async fn start_attempt(
        &self,
        claim: &EndpointClaim,
        delivery_id: Uuid,
        lease: Duration,
    ) -> Result<AttemptStart, StoreError> {
        let mut tx = self.begin().await?;
        let url: Option<String> = sqlx::query_scalar(
            "UPDATE webhook_endpoints SET relay_lease_until = now() + make_interval(secs => $4)
             WHERE id = $1 AND relay_owner = $2 AND relay_fence = $3 AND enabled
               AND relay_lease_until > now()
             RETURNING url",
        )
        .bind(claim.endpoint_id)
        .bind(claim.owner)
        .bind(claim.fence)
        .bind(secs(lease))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(url) = url else {
            return Ok(AttemptStart::LeaseLost);
        };
        let numbers: Option<(i32, i32)> = sqlx::query_as(
            "UPDATE webhook_deliveries SET attempt_count = attempt_count + 1,
                 next_attempt_at = now() + make_interval(secs => $3)
             WHERE id = $1 AND endpoint_id = $2 AND status = 'pending' AND next_attempt_at <= now()
             RETURNING attempt_count, attempt_count - retry_base",
        )
        .bind(delivery_id)
        .bind(claim.endpoint_id)
        .bind(secs(lease))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((number, try_number)) = numbers else {
            tx.commit().await?;
            return Ok(AttemptStart::NotDue);
        };
        sqlx::query(
            "UPDATE webhook_attempts SET outcome = 'abandoned', finished_at = now(),
                 error = 'the relay stopped before recording the outcome'
             WHERE delivery_id = $1 AND outcome = 'in_flight'",
        )
        .bind(delivery_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO webhook_attempts (delivery_id, number) VALUES ($1, $2)")
            .bind(delivery_id)
            .bind(number)
            .execute(&mut *tx)
            .await?;
        let secrets: Vec<SecretColumns> = sqlx::query_as(&format!(
            "SELECT {SECRET_COLUMNS} FROM webhook_endpoint_secrets
             WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > now())
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(claim.endpoint_id)
        .fetch_all(&mut *tx)
        .await?;
        let secrets = secrets.into_iter().map(SecretRow::from).collect();
        tx.commit().await?;
        Ok(AttemptStart::Started(StartedAttempt {
            delivery_id,
            number,
            try_number,
            url,
            secrets,
        }))
    }

    /// Records how attempt `number` ended and what the delivery does next. The attempt is
    /// recorded whatever happened since; the delivery changes only if no later attempt started.
    pub async fn finish_attempt(
        &self,
        claim: &EndpointClaim,
        delivery_id: Uuid,
        number: i32,
        result: &AttemptResult,
        next: NextStep,
        disable_after: Duration,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE webhook_attempts SET finished_at = now(), outcome = $3, status_code = $4,
                 latency_ms = $5, error = $6, response_snippet = $7
             WHERE delivery_id = $1 AND number = $2 AND outcome = 'in_flight'",
        )
        .bind(delivery_id)
        .bind(number)
        .bind(
            if result.succeeded {
                AttemptOutcome::Succeeded
            } else {
                AttemptOutcome::Failed
            }
            .as_str(),
        )
        .bind(result.status_code.map(i32::from))
        .bind(i32::try_from(result.latency_ms).unwrap_or(i32::MAX))
        .bind(&result.error)
        .bind(&result.response_snippet)
        .execute(&mut *tx)
        .await?;
        let (status, next_attempt_at) = match next {
            NextStep::Delivered => (DeliveryStatus::Delivered, None),
            NextStep::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
            NextStep::Failed | NextStep::EndpointGone => (DeliveryStatus::Failed, None),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $3, next_attempt_at = coalesce($4, next_attempt_at),
                 last_status_code = $5,
                 delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END
             WHERE id = $1 AND attempt_count = $2 AND status = 'pending'",
        )
        .bind(delivery_id)
        .bind(number)
        .bind(status.as_str())
        .bind(next_attempt_at)
        .bind(result.status_code.map(i32::from))
        .execute(&mut *tx)
        .await?;
        if next == NextStep::EndpointGone {
            sqlx::query(
                "UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'gone',
                     relay_owner = NULL, relay_lease_until = NULL, updated_at = now()
                 WHERE id = $1",
            )
            .bind(claim.endpoint_id)
            .execute(&mut *tx)
            .await?;
        } else if result.succeeded {
            sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1")
                .bind(claim.endpoint_id)
                .execute(&mut *tx)
                .await?;
        } else {
            disable_if_failing_too_long(&mut tx, claim.endpoint_id, disable_after).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives the endpoint up before the lease ends, so any relay may take it at once. The lease
    /// ends now rather than being cleared: claims take the longest-waiting endpoints first, so a
    /// tenant's endpoints take turns.
    pub async fn release_endpoint(&self, claim: &EndpointClaim) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_endpoints SET relay_owner = NULL, relay_lease_until = now()
             WHERE id = $1 AND relay_owner = $2 AND relay_fence = $3",
        )
        .bind(claim.endpoint_id)
        .bind(claim.owner)
        .bind(claim.fence)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Up to `limit` signing secrets after `after` (by id) not sealed under `key_id`: sealed
    /// under another key, or legacy plaintext. Expired secrets are included: they may still
    /// be in their overlap when a clock disagrees, and the re-encryption must leave no row
    /// behind.
    pub async fn secrets_not_sealed_under(
        &self,
        key_id: &str,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SecretRow>, StoreError> {
        let rows: Vec<SecretColumns> = sqlx::query_as(&format!(
            "SELECT {SECRET_COLUMNS} FROM webhook_endpoint_secrets
             WHERE key_id IS DISTINCT FROM $1 AND ($2::uuid IS NULL OR id > $2)
             ORDER BY id LIMIT $3"
        ))
        .bind(key_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(SecretRow::from).collect())
    }

    /// Replaces the stored form of each secret with its new seal, in one transaction, each
    /// only if the row still holds what was read (another process may have resealed it
    /// meanwhile). Clears any legacy plaintext. Returns how many rows changed.
    pub async fn reseal_secrets(
        &self,
        resealed: &[(SecretRow, NewSecret)],
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let mut changed = 0;
        for (old, new) in resealed {
            let (old_key, old_bytes) = match &old.stored {
                StoredSecret::Sealed { key_id, bytes } => (Some(key_id.as_str()), Some(bytes)),
                StoredSecret::Legacy(_) => (None, None),
            };
            changed += sqlx::query(
                "UPDATE webhook_endpoint_secrets SET key_id = $3, sealed = $4, secret = NULL
                 WHERE id = $1 AND endpoint_id = $2
                   AND key_id IS NOT DISTINCT FROM $5 AND sealed IS NOT DISTINCT FROM $6",
            )
            .bind(old.id)
            .bind(old.endpoint_id)
            .bind(&new.key_id)
            .bind(&new.sealed)
            .bind(old_key)
            .bind(old_bytes)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// How many signing secrets are stored under each key id (`None`: legacy plaintext).
    pub async fn secrets_by_key(&self) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT key_id, count(*) FROM webhook_endpoint_secrets GROUP BY key_id ORDER BY key_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// When the earliest pending delivery falls due, to sleep until then.
    pub async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT min(d.next_attempt_at) FROM webhook_deliveries d
             JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.status = 'pending' AND e.enabled",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}

/// Notes a failure; an endpoint that has failed for `disable_after` without a success since is
/// disabled (`disabled_reason: failing`) and a `webhook_endpoint.disabled` event says so.
async fn disable_if_failing_too_long(
    tx: &mut sqlx::PgConnection,
    endpoint_id: Uuid,
    disable_after: Duration,
) -> Result<(), StoreError> {
    let disabled: Option<EndpointRecord> = sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now()),
             enabled = CASE WHEN failing_since <= now() - make_interval(secs => $2)
                            THEN false ELSE enabled END,
             disabled_reason = CASE WHEN failing_since <= now() - make_interval(secs => $2)
                                    THEN 'failing' ELSE disabled_reason END,
             updated_at = CASE WHEN failing_since <= now() - make_interval(secs => $2)
                               THEN now() ELSE updated_at END
         WHERE id = $1 AND enabled
         RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(endpoint_id)
    .bind(secs(disable_after))
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(endpoint) = disabled.filter(|e| !e.enabled) {
        let tenant_id = endpoint.tenant_id;
        crate::events::insert_event(
            tx,
            tenant_id,
            domain::EventType::WebhookEndpointDisabled,
            None,
            None,
            &crate::events::EventSnapshot::WebhookEndpoint {
                endpoint: Box::new(endpoint),
            },
        )
        .await?;
    }
    Ok(())
}
