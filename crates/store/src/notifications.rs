//! Postgres notifications, on one connection per process: every listener in the process is fed
//! from it, so a replica holds one LISTEN connection whatever it waits for.

use sqlx::postgres::PgListener;

use crate::{Store, StoreError};

/// What another transaction (on any replica) announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Events were sequenced up to this position.
    EventsSequenced(i64),
    /// An item of this generation finished.
    GenerationItemFinished(uuid::Uuid),
}

/// The process's listening connection.
pub struct Notifications {
    listener: PgListener,
}

impl Notifications {
    /// The next notification; unreadable payloads are skipped.
    pub async fn recv(&mut self) -> Result<Notification, StoreError> {
        loop {
            let notification = self.listener.recv().await?;
            let payload = notification.payload();
            let parsed = match notification.channel() {
                crate::events::EVENTS_CHANNEL => {
                    payload.parse().ok().map(Notification::EventsSequenced)
                }
                crate::generations::GENERATION_CHANNEL => uuid::Uuid::parse_str(payload)
                    .ok()
                    .map(Notification::GenerationItemFinished),
                _ => None,
            };
            if let Some(parsed) = parsed {
                return Ok(parsed);
            }
        }
    }
}

impl Store {
    /// Opens the process's one listening connection, on every channel the service uses. It
    /// is not one of the pool's: requests and workers keep every pooled connection.
    pub async fn listen(&self) -> Result<Notifications, StoreError> {
        let mut listener = PgListener::connect_with(&self.listening_pool()).await?;
        listener
            .listen_all([
                crate::events::EVENTS_CHANNEL,
                crate::generations::GENERATION_CHANNEL,
            ])
            .await?;
        Ok(Notifications { listener })
    }
}
