//! Black-box tests: the real router over HTTP, real PostgreSQL (one database per test).
//! One test binary with modules, so the suite links once.

mod auth;
mod avatars;
mod connections;
mod events;
mod faces;
mod generations;
mod http_errors;
mod openapi;
mod operations;
mod outbound_webhooks;
mod photos;
mod swagger_ui;
mod training_data;
mod trainings;
