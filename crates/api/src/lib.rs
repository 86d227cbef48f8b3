//! The avatars HTTP service: routes, extractors, authentication, the OpenAPI document,
//! problem+json, and the `avatars` binary. Use cases live in the `service` crate.

#[allow(unsafe_code)]
pub mod allocator;
pub mod app;
pub mod application;
pub mod auth;
pub mod avatar_in_path;
pub mod cli;
mod dev;
pub mod event_bodies;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
mod paced_body;
pub mod pagination;
pub mod problem;
pub mod rate_limit;
pub mod responses;
pub mod routes;
pub mod server;
pub mod server_timing;
pub mod state;
pub mod telemetry;
pub mod views;

pub use app::{openapi, openapi_json, router, shutdown_signal};
pub use application::Application;
pub use server::serve;
pub use service::{Config, Settings};
pub use state::AppState;
