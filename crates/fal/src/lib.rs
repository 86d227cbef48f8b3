//! Client for the fal.ai HTTP APIs used by the avatars service.
//!
//! - [`FalClient`]: queue (submit, status, status stream, result, cancel) and storage upload.
//! - [`Verifier`]: ED25519 webhook signature verification against a cached JWKS.
//! - [`models`]: typed, leniently parsed inputs and outputs of the FLUX endpoints we use.
//! - [`RetryPolicy`]: when a failed call may be repeated, as data.
//!
//! Every wire fact follows `fal-protocol.md`; facts that document marks as uncertain are
//! configurable (see [`FalConfig`] and [`VerifierConfig`]). This crate knows nothing of the
//! service's database: it takes and returns fal's own identifiers and URLs.

mod classify;
mod client;
mod config;
mod endpoint;
mod error;
pub mod models;
mod queue;
mod retry;
mod sse;
mod status;
mod storage;
mod webhook;

pub use client::{FalClient, RequestHeaders};
pub use config::FalConfig;
pub use endpoint::EndpointId;
pub use error::{FalError, SubmitError, TransportStage, ValidationIssue};
pub use queue::{BilledResult, CancelOutcome, QueuePriority, RequestRef, SubmitOptions, Submitted};
pub use retry::{AttemptFailure, Operation, RetryDecision, RetryPolicies, RetryPolicy};
pub use status::{LogEntry, Metrics, QueueStatus, StatusStream};
pub use storage::{ByteStream, ObjectLifecycle, UploadedFile};
pub use webhook::{
    signed_message, SignatureHeaders, VerifiedWebhook, Verifier, VerifierConfig, WebhookBody,
    WebhookError, WebhookStatus,
};
