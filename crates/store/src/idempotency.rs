//! `Idempotency-Key` records: the first request with a key does the work; a repeat with the
//! same body replays the stored answer, with another body is refused, and one arriving while the
//! first is still running is told so.

use serde_json::Value;
use uuid::Uuid;

use crate::error::StoreError;
use crate::records::parse_column;
use crate::Store;

/// Where a key's request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    InFlight,
    Done,
}

impl KeyState {
    const ALL: [KeyState; 2] = [Self::InFlight, Self::Done];

    fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Done => "done",
        }
    }

    fn parse(s: &str) -> Option<KeyState> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyClaim {
    /// This request owns the key: do the work, then `finish_idempotent`.
    Claimed,
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
}

/// A stored key: its request hash, state, answer, and whether its claim went stale.
type StoredKey = (
    String,
    String,
    Option<i32>,
    Option<Value>,
    Option<Value>,
    bool,
);

impl Store {
    /// Claims `key` for a request hashing to `request_hash`. A claim left in flight longer than
    /// `stale_after` (its process died) is taken over.
    pub async fn claim_idempotency_key(
        &self,
        tenant_id: Uuid,
        key: &str,
        request_hash: &str,
        stale_after: std::time::Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, key, request_hash, state)
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, key) DO NOTHING",
        )
        .bind(tenant_id)
        .bind(key)
        .bind(request_hash)
        .bind(KeyState::InFlight.as_str())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(IdempotencyClaim::Claimed);
        }
        let existing: Option<StoredKey> = sqlx::query_as(
            "SELECT request_hash, state, response_status, response_body, response_headers,
                    created_at < now() - make_interval(secs => $3)
             FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
        )
        .bind(tenant_id)
        .bind(key)
        .bind(stale_after.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        let Some((hash, state, status, body, headers, stale)) = existing else {
            // Deleted between the two statements (its request failed): try once more.
            return Box::pin(self.claim_idempotency_key(tenant_id, key, request_hash, stale_after))
                .await;
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
        if stale {
            let taken = sqlx::query(
                "UPDATE idempotency_keys SET created_at = now()
                 WHERE tenant_id = $1 AND key = $2 AND state = $4
                   AND created_at < now() - make_interval(secs => $3)",
            )
            .bind(tenant_id)
            .bind(key)
            .bind(stale_after.as_secs_f64())
            .bind(KeyState::InFlight.as_str())
            .execute(&self.pool)
            .await?;
            if taken.rows_affected() == 1 {
                return Ok(IdempotencyClaim::Claimed);
            }
        }
        Ok(IdempotencyClaim::InFlight)
    }

    /// Stores the answer to replay for `key`.
    pub async fn finish_idempotency_key(
        &self,
        tenant_id: Uuid,
        key: &str,
        status: u16,
        body: &Value,
        headers: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET state = $6, response_status = $3, response_body = $4,
                 response_headers = $5
             WHERE tenant_id = $1 AND key = $2",
        )
        .bind(tenant_id)
        .bind(key)
        .bind(i32::from(status))
        .bind(body)
        .bind(headers)
        .bind(KeyState::Done.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a claim whose request failed in a way worth retrying (a 5xx).
    pub async fn release_idempotency_key(
        &self,
        tenant_id: Uuid,
        key: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND state = $3",
        )
        .bind(tenant_id)
        .bind(key)
        .bind(KeyState::InFlight.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
