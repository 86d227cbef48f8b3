//! Caller-visible events: written to the outbox in the transaction that causes them, then
//! sequenced (given their place in commit order and their rendered body) by one sequencer at a
//! time, and read back by webhook deliveries and event streams.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::generations::{GenerationImage, GenerationRecord};
use crate::{JobRecord, ModelRecord, Store, StoreError};

/// The channel on which the sequencer announces newly sequenced events (payload: the highest
/// position), to every replica's event streams and relays.
pub const EVENTS_CHANNEL: &str = "avatars_events";

/// Serialises sequencer runs across replicas, so positions follow commit order.
const SEQUENCER_LOCK: i64 = 0x6176_6174_6172_7331; // "avatars1"

/// What an event is about, as the transaction that caused it left it. The service renders it
/// into the body callers receive when the event is sequenced; the store knows nothing of that
/// body's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventSnapshot {
    Training {
        job: Box<JobRecord>,
        model: Option<ModelRecord>,
    },
    Generation {
        generation: GenerationRecord,
        jobs: Vec<JobRecord>,
        images: Vec<GenerationImage>,
    },
    Avatar {
        avatar: Box<domain::Avatar>,
    },
}

/// An event waiting to be sequenced.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UnsequencedEvent {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub event_type: String,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

/// A sequenced event, as streams and deliveries read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SequencedEvent {
    pub id: Uuid,
    pub position: i64,
    pub event_type: String,
    pub payload: Value,
}

/// Which of a tenant's events a stream wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub avatar_id: Option<Uuid>,
    /// A training's or a generation's id.
    pub job_id: Option<Uuid>,
    pub types: Option<Vec<String>>,
}

/// Writes an event into the outbox, inside the caller's transaction. `job_id` is the id a
/// caller follows: the training, or the generation.
pub(crate) async fn insert_event(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    event_type: &str,
    job_id: Option<Uuid>,
    avatar_id: Option<Uuid>,
    snapshot: &EventSnapshot,
) -> Result<(), StoreError> {
    let data = serde_json::to_value(snapshot).map_err(|e| StoreError::Encode(e.to_string()))?;
    sqlx::query(
        "INSERT INTO outbox_events (id, tenant_id, event_type, job_id, avatar_id, data)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(event_type)
    .bind(job_id)
    .bind(avatar_id)
    .bind(data)
    .execute(conn)
    .await?;
    Ok(())
}

/// One sequencer run, holding the sequencer lock until [`SequencerRun::commit`].
pub struct SequencerRun {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pub events: Vec<UnsequencedEvent>,
    last_position: Option<i64>,
}

impl SequencerRun {
    /// Gives `event` the next position and its rendered body, and creates a delivery for each
    /// enabled endpoint of its tenant subscribed to its type.
    pub async fn sequence(&mut self, event_id: Uuid, payload: &Value) -> Result<(), StoreError> {
        let (position, tenant_id, event_type): (i64, Uuid, String) = sqlx::query_as(
            "UPDATE outbox_events SET position = nextval('outbox_position_seq'), payload = $2
             WHERE id = $1
             RETURNING position, tenant_id, event_type",
        )
        .bind(event_id)
        .bind(payload)
        .fetch_one(&mut *self.tx)
        .await?;
        let endpoints: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM webhook_endpoints
             WHERE tenant_id = $1 AND enabled AND (event_types IS NULL OR $2 = ANY(event_types))",
        )
        .bind(tenant_id)
        .bind(&event_type)
        .fetch_all(&mut *self.tx)
        .await?;
        for endpoint in endpoints {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, event_position, next_attempt_at)
                 VALUES ($1, $2, $3, $4, $5, now())
                 ON CONFLICT (endpoint_id, event_id) DO NOTHING",
            )
            .bind(Uuid::now_v7())
            .bind(tenant_id)
            .bind(endpoint)
            .bind(event_id)
            .bind(position)
            .execute(&mut *self.tx)
            .await?;
        }
        self.last_position = Some(position);
        Ok(())
    }

    /// Commits the run and, when it sequenced anything, tells every replica.
    pub async fn commit(mut self) -> Result<Option<i64>, StoreError> {
        if let Some(position) = self.last_position {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(position.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(self.last_position)
    }
}

impl Store {
    /// Starts a sequencer run over up to `limit` committed, unsequenced events (oldest first),
    /// or `None` when there are none. Runs of different replicas wait for each other.
    pub async fn start_sequencing(&self, limit: i64) -> Result<Option<SequencerRun>, StoreError> {
        // A cheap look first, so idle replicas do not queue on the lock.
        let any: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM outbox_events WHERE position IS NULL LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        if any.is_none() {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SEQUENCER_LOCK)
            .execute(&mut *tx)
            .await?;
        let events: Vec<UnsequencedEvent> = sqlx::query_as(
            "SELECT id, tenant_id, event_type, data, created_at FROM outbox_events
             WHERE position IS NULL ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if events.is_empty() {
            tx.commit().await?;
            return Ok(None);
        }
        Ok(Some(SequencerRun {
            tx,
            events,
            last_position: None,
        }))
    }

    /// The position of a tenant's event, for resuming a stream after it.
    pub async fn event_position(
        &self,
        tenant_id: domain::TenantId,
        event_id: Uuid,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT position FROM outbox_events
             WHERE tenant_id = $1 AND id = $2 AND position IS NOT NULL",
        )
        .bind(tenant_id.0)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The highest position handed out so far (0 before the first event).
    pub async fn latest_event_position(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<i64>>(
            "SELECT max(position) FROM outbox_events WHERE position IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?
        .unwrap_or(0))
    }

    /// A tenant's sequenced events after `after`, in order, matching `filter`.
    pub async fn events_after(
        &self,
        tenant_id: domain::TenantId,
        after: i64,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<SequencedEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, position, event_type, payload FROM outbox_events
             WHERE tenant_id = $1 AND position > $2
               AND ($3::uuid IS NULL OR avatar_id = $3)
               AND ($4::uuid IS NULL OR job_id = $4)
               AND ($5::text[] IS NULL OR event_type = ANY($5))
             ORDER BY position LIMIT $6",
        )
        .bind(tenant_id.0)
        .bind(after)
        .bind(filter.avatar_id)
        .bind(filter.job_id)
        .bind(&filter.types)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A connection listening for newly sequenced events.
    pub async fn listen_events(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        Ok(listener)
    }
}
