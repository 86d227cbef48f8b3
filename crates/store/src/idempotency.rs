//! `Idempotency-Key` records: the first request with a key does the work; a repeat with the
//! same body replays the stored answer, with another body is refused, and one arriving while the
//! first is still running is told so.

use serde_json::Value;
use uuid::Uuid;

use crate::error::StoreError;
use crate::records::parse_column;
use crate::Store;

domain::named_enum! {
    /// Where a key's request stands.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum KeyState {
        InFlight => "in_flight",
        Done => "done",
    }
}

/// What a key's request created, bound to the key in the creating transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotentResource {
    Training(Uuid),
    Generation(Uuid),
}

impl IdempotentResource {
    fn kind(self) -> &'static str {
        match self {
            Self::Training(_) => "training",
            Self::Generation(_) => "generation",
        }
    }

    fn id(self) -> Uuid {
        match self {
            Self::Training(id) | Self::Generation(id) => id,
        }
    }

    fn from_columns(kind: Option<&str>, id: Option<Uuid>) -> Option<Self> {
        match (kind?, id?) {
            ("training", id) => Some(Self::Training(id)),
            ("generation", id) => Some(Self::Generation(id)),
            _ => None,
        }
    }
}

/// A key claimed by the request now handling it; only this claim renews, binds or finishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyHold {
    pub tenant_id: Uuid,
    pub key: String,
    pub token: Uuid,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyClaim {
    /// This request owns the key: do the work (binding what it creates), then finish.
    Claimed(IdempotencyHold),
    /// Another request with this key is being handled now.
    InFlight,
    /// The key was used with a different request.
    Mismatch,
    /// The key's request finished: replay this.
    Done {
        status: u16,
        body: Value,
        headers: Value,
    },
    /// The key's request created this and then stopped before answering (its process died, or
    /// its client went away): answer with the resource as it is now.
    Committed(IdempotentResource),
}

/// A stored key: request hash, state, answer, claim lease expired, bound resource.
type StoredKey = (
    String,
    String,
    Option<i32>,
    Option<Value>,
    Option<Value>,
    bool,
    Option<String>,
    Option<Uuid>,
);

impl Store {
    /// Claims `key` for a request hashing to `request_hash`, under a lease of `lease` that the
    /// request renews ([`Store::renew_idempotency_key`]) while it runs. A claim whose lease
    /// ran out (its request stopped renewing) is taken over, unless its request created
    /// something: then that is answered.
    pub async fn claim_idempotency_key(
        &self,
        tenant_id: Uuid,
        key: &str,
        request_hash: &str,
        lease: std::time::Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let token = Uuid::new_v4();
        let hold = IdempotencyHold {
            tenant_id,
            key: key.to_string(),
            token,
        };
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, key, request_hash, state, claim_token, lease_until)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
             ON CONFLICT (tenant_id, key) DO NOTHING",
        )
        .bind(tenant_id)
        .bind(key)
        .bind(request_hash)
        .bind(KeyState::InFlight.as_str())
        .bind(token)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(IdempotencyClaim::Claimed(hold));
        }
        let existing: Option<StoredKey> = sqlx::query_as(
            "SELECT request_hash, state, response_status, response_body, response_headers,
                    coalesce(lease_until, created_at) < now(), resource_kind, resource_id
             FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
        )
        .bind(tenant_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some((hash, state, status, body, headers, expired, kind, id)) = existing else {
            // Deleted between the two statements (its request failed): try once more.
            return Box::pin(self.claim_idempotency_key(tenant_id, key, request_hash, lease)).await;
        };
        if hash != request_hash {
            return Ok(IdempotencyClaim::Mismatch);
        }
        if parse_column("idempotency_keys", "state", &state, KeyState::parse)? == KeyState::Done {
            return Ok(IdempotencyClaim::Done {
                status: status.unwrap_or(200) as u16,
                body: body.unwrap_or(Value::Null),
                headers: headers.unwrap_or(Value::Null),
            });
        }
        if !expired {
            return Ok(IdempotencyClaim::InFlight);
        }
        if let Some(resource) = IdempotentResource::from_columns(kind.as_deref(), id) {
            return Ok(IdempotencyClaim::Committed(resource));
        }
        let taken = sqlx::query(
            "UPDATE idempotency_keys
             SET claim_token = $3, lease_until = now() + make_interval(secs => $4)
             WHERE tenant_id = $1 AND key = $2 AND state = $5 AND resource_id IS NULL
               AND coalesce(lease_until, created_at) < now()",
        )
        .bind(tenant_id)
        .bind(key)
        .bind(token)
        .bind(lease.as_secs_f64())
        .bind(KeyState::InFlight.as_str())
        .execute(&self.pool)
        .await?;
        Ok(if taken.rows_affected() == 1 {
            IdempotencyClaim::Claimed(hold)
        } else {
            IdempotencyClaim::InFlight
        })
    }

    /// Extends the hold's lease while its request runs. False when the claim was lost.
    pub async fn renew_idempotency_key(
        &self,
        hold: &IdempotencyHold,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let renewed = sqlx::query(
            "UPDATE idempotency_keys SET lease_until = now() + make_interval(secs => $4)
             WHERE tenant_id = $1 AND key = $2 AND claim_token = $3 AND state = $5",
        )
        .bind(hold.tenant_id)
        .bind(&hold.key)
        .bind(hold.token)
        .bind(lease.as_secs_f64())
        .bind(KeyState::InFlight.as_str())
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Stores the answer to replay for `key`. With a hold, only while the claim is its own.
    pub async fn finish_idempotency_key(
        &self,
        tenant_id: Uuid,
        key: &str,
        hold: Option<&IdempotencyHold>,
        status: u16,
        body: &Value,
        headers: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET state = $6, response_status = $3, response_body = $4,
                 response_headers = $5, lease_until = NULL
             WHERE tenant_id = $1 AND key = $2 AND ($7::uuid IS NULL OR claim_token = $7)",
        )
        .bind(tenant_id)
        .bind(key)
        .bind(i32::from(status))
        .bind(body)
        .bind(headers)
        .bind(KeyState::Done.as_str())
        .bind(hold.map(|h| h.token))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a claim whose request failed in a way worth retrying (a 5xx, a quota), unless
    /// it created something. Returns what it created, which the caller answers with instead.
    pub async fn release_idempotency_key(
        &self,
        hold: &IdempotencyHold,
    ) -> Result<Option<IdempotentResource>, StoreError> {
        let released = sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE tenant_id = $1 AND key = $2 AND claim_token = $3 AND state = $4
               AND resource_id IS NULL",
        )
        .bind(hold.tenant_id)
        .bind(&hold.key)
        .bind(hold.token)
        .bind(KeyState::InFlight.as_str())
        .execute(&self.pool)
        .await?;
        if released.rows_affected() == 1 {
            return Ok(None);
        }
        let bound: Option<(Option<String>, Option<Uuid>)> = sqlx::query_as(
            "SELECT resource_kind, resource_id FROM idempotency_keys
             WHERE tenant_id = $1 AND key = $2 AND claim_token = $3",
        )
        .bind(hold.tenant_id)
        .bind(&hold.key)
        .bind(hold.token)
        .fetch_optional(&self.pool)
        .await?;
        Ok(bound.and_then(|(kind, id)| IdempotentResource::from_columns(kind.as_deref(), id)))
    }
}

/// Binds what a key's request created to the key, inside the creating transaction. A claim
/// that is no longer the hold's (its lease ran out and another request took it over) refuses
/// the whole creation.
pub(crate) async fn bind_resource_in(
    conn: &mut sqlx::PgConnection,
    hold: Option<&IdempotencyHold>,
    resource: IdempotentResource,
) -> Result<(), StoreError> {
    let Some(hold) = hold else {
        return Ok(());
    };
    let bound = sqlx::query(
        "UPDATE idempotency_keys SET resource_kind = $4, resource_id = $5
         WHERE tenant_id = $1 AND key = $2 AND claim_token = $3 AND state = $6",
    )
    .bind(hold.tenant_id)
    .bind(&hold.key)
    .bind(hold.token)
    .bind(resource.kind())
    .bind(resource.id())
    .bind(KeyState::InFlight.as_str())
    .execute(conn)
    .await?;
    if bound.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            constraint: IDEMPOTENCY_CLAIM.to_string(),
        })
    }
}

/// The "constraint" a creation whose Idempotency-Key claim was lost conflicts on.
pub const IDEMPOTENCY_CLAIM: &str = "idempotency_key_claim";
