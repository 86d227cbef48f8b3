//! Caller-visible events: written to the outbox in the transaction that causes them, then
//! sequenced (given their place in commit order and their rendered body) by one sequencer at a
//! time, and read back by webhook deliveries and event streams.

use chrono::{DateTime, Utc};
use domain::EventType;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StoreError;
use crate::records::{
    generation_by_id, generation_images, generation_jobs, GenerationImage, GenerationRecord,
    JobRecord, ModelRecord,
};
use crate::Store;

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
    WebhookEndpoint {
        endpoint: Box<crate::webhooks::EndpointRecord>,
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

/// Writes one event into the outbox: id, tenant, type, job, avatar, data.
pub(crate) const INSERT_OUTBOX_EVENT: &str =
    "INSERT INTO outbox_events (id, tenant_id, event_type, job_id, avatar_id, data)
     VALUES ($1, $2, $3, $4, $5, $6)";

/// Writes an event into the outbox, inside the caller's transaction. `job_id` is the id a
/// caller follows: the training, or the generation.
pub(crate) async fn insert_event(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    event_type: EventType,
    job_id: Option<Uuid>,
    avatar_id: Option<Uuid>,
    snapshot: &EventSnapshot,
) -> Result<(), StoreError> {
    let data = serde_json::to_value(snapshot).map_err(|e| StoreError::Encode(e.to_string()))?;
    sqlx::query(INSERT_OUTBOX_EVENT)
        .bind(Uuid::now_v7())
        .bind(tenant_id)
        .bind(event_type.as_str())
        .bind(job_id)
        .bind(avatar_id)
        .bind(data)
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes a `training.*` event with the training as the caller's transaction left it.
pub(crate) async fn insert_training_event(
    conn: &mut PgConnection,
    job: &JobRecord,
    event_type: EventType,
    model: Option<ModelRecord>,
) -> Result<(), StoreError> {
    insert_event(
        conn,
        job.tenant_id,
        event_type,
        Some(job.id),
        job.avatar_id,
        &EventSnapshot::Training {
            job: Box::new(job.clone()),
            model,
        },
    )
    .await
}

/// Writes a `generation.*` event with the generation as the transaction sees it.
pub(crate) async fn insert_generation_event(
    conn: &mut PgConnection,
    generation_id: Uuid,
    event_type: EventType,
) -> Result<(), StoreError> {
    let generation = generation_by_id(&mut *conn, generation_id)
        .await?
        .ok_or(StoreError::NotFound)?;
    let jobs = generation_jobs(&mut *conn, generation_id).await?;
    let images = generation_images(&mut *conn, generation_id).await?;
    insert_generation_event_of(conn, event_type, generation, jobs, images).await
}

/// [`insert_generation_event`] for a generation the caller's transaction has just read or
/// written: `jobs` and `images` are all of its own.
pub(crate) async fn insert_generation_event_of(
    conn: &mut PgConnection,
    event_type: EventType,
    generation: GenerationRecord,
    jobs: Vec<JobRecord>,
    images: Vec<GenerationImage>,
) -> Result<(), StoreError> {
    insert_event(
        conn,
        generation.tenant_id,
        event_type,
        Some(generation.id),
        generation.avatar_id,
        &EventSnapshot::Generation {
            generation,
            jobs,
            images,
        },
    )
    .await
}

/// New deliveries as columns, for one `INSERT ... SELECT FROM unnest(...)`.
#[derive(Default)]
struct DeliveryColumns {
    ids: Vec<Uuid>,
    tenants: Vec<Uuid>,
    endpoints: Vec<Uuid>,
    events: Vec<Uuid>,
    positions: Vec<i64>,
}

impl Store {
    /// Sequences up to `limit` committed, unsequenced events (oldest first) in one
    /// transaction: gives each the next position and the body `render` makes of it, creates a
    /// delivery for each enabled endpoint of its tenant subscribed to its type, and announces
    /// the highest position to every replica. Runs of different replicas wait for each other,
    /// so positions follow commit order. Returns the highest position, or `None` when there
    /// was nothing to do.
    pub async fn sequence_events(
        &self,
        limit: i64,
        render: impl Fn(&UnsequencedEvent) -> Value,
    ) -> Result<Option<i64>, StoreError> {
        // A cheap look first, so idle replicas do not queue on the lock.
        let any: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM outbox_events WHERE position IS NULL LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        if any.is_none() {
            return Ok(None);
        }
        let mut tx = self.begin().await?;
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
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let payloads: Vec<Value> = events.iter().map(&render).collect();
        let sequenced: Vec<(Uuid, Uuid, String, i64)> = sqlx::query_as(
            "UPDATE outbox_events o SET position = s.position, payload = s.payload
             FROM (SELECT t.id, t.payload, nextval('outbox_position_seq') AS position
                   FROM unnest($1::uuid[], $2::jsonb[]) WITH ORDINALITY AS t(id, payload, n)) s
             WHERE o.id = s.id
             RETURNING o.id, o.tenant_id, o.event_type, o.position",
        )
        .bind(&ids)
        .bind(&payloads)
        .fetch_all(&mut *tx)
        .await?;
        let tenants: Vec<Uuid> = sequenced.iter().map(|e| e.1).collect();
        let endpoints: Vec<(Uuid, Uuid, Option<Vec<String>>)> = sqlx::query_as(
            "SELECT id, tenant_id, event_types FROM webhook_endpoints
             WHERE enabled AND tenant_id = ANY($1)",
        )
        .bind(&tenants)
        .fetch_all(&mut *tx)
        .await?;
        let mut deliveries = DeliveryColumns::default();
        let mut in_order = sequenced.clone();
        in_order.sort_by_key(|e| e.3);
        for (event_id, tenant_id, event_type, position) in &in_order {
            for (endpoint_id, _, _) in endpoints.iter().filter(|(_, tenant, types)| {
                tenant == tenant_id
                    && types
                        .as_ref()
                        .is_none_or(|types| types.contains(event_type))
            }) {
                deliveries.ids.push(Uuid::now_v7());
                deliveries.tenants.push(*tenant_id);
                deliveries.endpoints.push(*endpoint_id);
                deliveries.events.push(*event_id);
                deliveries.positions.push(*position);
            }
        }
        if !deliveries.ids.is_empty() {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, event_position, next_attempt_at)
                 SELECT id, tenant_id, endpoint_id, event_id, position, now()
                 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::bigint[])
                     AS t(id, tenant_id, endpoint_id, event_id, position)
                 ON CONFLICT (endpoint_id, event_id) DO NOTHING",
            )
            .bind(&deliveries.ids)
            .bind(&deliveries.tenants)
            .bind(&deliveries.endpoints)
            .bind(&deliveries.events)
            .bind(&deliveries.positions)
            .execute(&mut *tx)
            .await?;
        }
        let highest = in_order.last().map(|e| e.3);
        if let Some(position) = highest {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(position.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(highest)
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

    /// The tenants with events sequenced after `after` and up to `upto`: whose streams to wake.
    pub async fn tenants_with_events(
        &self,
        after: i64,
        upto: i64,
    ) -> Result<Vec<domain::TenantId>, StoreError> {
        let tenants: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT tenant_id FROM outbox_events WHERE position > $1 AND position <= $2",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        Ok(tenants.into_iter().map(domain::TenantId).collect())
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
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.listening_pool()).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        Ok(listener)
    }
}
