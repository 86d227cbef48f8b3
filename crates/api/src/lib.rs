//! The avatars HTTP service.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
mod dev;
pub mod events;
pub mod extract;
pub mod fal_runtime;
pub mod generation;
pub mod idempotency;
pub mod intake;
pub mod janitor;
pub mod metrics;
pub mod openapi;
pub mod pagination;
pub mod problem;
pub mod routes;
pub mod state;
pub mod telemetry;
pub mod training;
pub mod training_data;
pub mod workers;

pub use app::{openapi, openapi_json, router, serve, shutdown_signal};
pub use config::{Config, EventSettings, HttpLimits};
pub use state::{AppState, ServiceSettings};
