//! The avatars application layer: every use case (avatars, photos, trainings, generations,
//! webhook endpoints, deletion, fal webhook intake) and every background worker (submitter,
//! reconciler, custody, sequencer, relay, janitor).
//!
//! It speaks in domain types and [`ServiceError`]; it knows nothing of HTTP. The `api` crate
//! parses requests, calls one function here and renders the result.

pub mod avatars;
pub mod callback_batch;
pub mod check_pool;
pub mod config;
pub mod context;
pub mod deletion;
pub mod error;
pub mod event_streams;
pub mod events;
pub mod fal_errors;
pub mod fal_link;
pub mod fal_webhook;
pub mod generation_items;
pub mod generations;
pub mod jobs;
pub mod metrics;
pub mod photo_set;
pub mod photos;
pub mod readiness;
pub mod secrets;
pub mod trace_context;
pub mod training_data;
pub mod trainings;
pub mod usage;
pub mod webhook_endpoints;
pub mod workers;

pub use config::{Config, ConfigError};

/// Which page of a list: up to `limit` items after the item with id `after` (ids are
/// time-ordered, so "after" is "older than").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<uuid::Uuid>,
    pub limit: u32,
}

/// Which page of one avatar's trainings or generations a tenant asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvatarListing {
    pub tenant: domain::TenantId,
    pub avatar: domain::AvatarId,
    pub page: PageRequest,
}
pub use context::{Service, Settings};
pub use error::{Attachment, ErrorKind, InputLocation, JobFailure, ServiceError, Violation};
