//! Postgres notifications, on one connection per process: every listener in the process is fed
//! from it, so a replica holds one LISTEN connection whatever it waits for.
//!
//! The connection also keeps the store's key cache true: revoked keys are dropped from it as
//! their notifications arrive, and it is emptied and bypassed whenever the connection is lost
//! (notifications may have been missed), until the process listens again.

use std::sync::Arc;

use sqlx::postgres::PgListener;

use crate::key_cache::{KeyCache, API_KEY_CHANNEL};

use crate::{Store, StoreError};

/// What another transaction (on any replica) announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Events were sequenced up to this position.
    EventsSequenced(i64),
    /// An item of this generation finished.
    GenerationItemFinished(uuid::Uuid),
}

/// The process's listening connection. Dropping it (or losing it) empties and bypasses the
/// key cache until the process listens again.
pub struct Notifications {
    listener: PgListener,
    keys: Arc<KeyCache>,
    /// Whether this connection still counts as up for the key cache.
    up: bool,
}

impl Notifications {
    /// The next notification; unreadable payloads are skipped. Fails when the connection is
    /// lost: listen again with [`Store::listen`] (what was announced meanwhile is not heard).
    pub async fn recv(&mut self) -> Result<Notification, StoreError> {
        if !self.up {
            return Err(lost());
        }
        loop {
            let notification = match self.listener.try_recv().await {
                Ok(Some(notification)) => notification,
                Ok(None) => {
                    self.down();
                    return Err(lost());
                }
                Err(error) => {
                    self.down();
                    return Err(error.into());
                }
            };
            let payload = notification.payload();
            let parsed = match notification.channel() {
                crate::events::EVENTS_CHANNEL => {
                    payload.parse().ok().map(Notification::EventsSequenced)
                }
                crate::generations::GENERATION_CHANNEL => uuid::Uuid::parse_str(payload)
                    .ok()
                    .map(Notification::GenerationItemFinished),
                API_KEY_CHANNEL => {
                    match uuid::Uuid::parse_str(payload) {
                        Ok(id) => self.keys.revoked(domain::ApiKeyId(id)),
                        // Not ours to read: forget every key rather than keep a revoked one.
                        Err(_) => {
                            self.keys.not_listening();
                            self.keys.listening();
                        }
                    }
                    None
                }
                _ => None,
            };
            if let Some(parsed) = parsed {
                return Ok(parsed);
            }
        }
    }
}

impl Notifications {
    fn down(&mut self) {
        if std::mem::replace(&mut self.up, false) {
            self.keys.not_listening();
        }
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.down();
    }
}

fn lost() -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the listening connection was lost",
    )))
}

impl Store {
    /// Opens the process's one listening connection, on every channel the service uses. It
    /// is not one of the pool's: requests and workers keep every pooled connection.
    pub async fn listen(&self) -> Result<Notifications, StoreError> {
        let mut listener = PgListener::connect_with(&self.listening_pool()).await?;
        // A lost connection must surface (see `recv`), not be replaced behind our back.
        listener.eager_reconnect(false);
        listener
            .listen_all([
                crate::events::EVENTS_CHANNEL,
                crate::generations::GENERATION_CHANNEL,
                API_KEY_CHANNEL,
            ])
            .await?;
        self.keys.listening();
        Ok(Notifications {
            listener,
            keys: self.keys.clone(),
            up: true,
        })
    }
}
