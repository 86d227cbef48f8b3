//! Conformance of the `fal` client against `fal-sim`: every queue operation, every error
//! class, uploads and webhook verification end to end.

mod common;
mod errors;
mod known_answer;
mod queue;
mod retries;
mod secrets;
mod storage;
mod webhooks;
