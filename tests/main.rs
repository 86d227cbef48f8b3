//! Black-box tests: the real router over HTTP, real PostgreSQL (one database per test).
//! One test binary with modules, so the suite links once.

// Tests hold transactions open on purpose and never abandon one during its BEGIN, which is
// what `Store::begin` guards against.
#![allow(clippy::disallowed_methods)]

mod auth;
mod avatars;
mod cancels;
mod connections;
mod database;
mod deletion;
mod events;
mod faces;
mod fairness;
mod fal_callbacks;
mod generation_cancel;
mod generations;
mod http_errors;
mod metrics;
mod openapi;
mod operations;
mod outbound_webhooks;
mod photos;
mod prometheus;
mod retention;
mod s3;
mod secrets_at_rest;
mod shutdown;
mod status_checks;
mod swagger_ui;
mod traces;
mod trainers;
mod training_data;
mod trainings;
mod usage;
