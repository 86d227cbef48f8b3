//! A protocol-faithful fal.ai simulator: queue API, storage and CDN, JWKS and signed webhooks,
//! with fault knobs and a log of everything it received.
//!
//! It follows `fal-protocol.md` and shares no code with the `fal` client, so a misunderstanding
//! of the protocol in the client cannot hide behind shared types. Start it in-process with
//! [`FalSim::start`] (port 0 by default) or run the `fal-sim` binary.
//!
//! One listener serves everything under path prefixes: the queue at `/queue`, the REST API at
//! `/rest` (JWKS at `/rest/.well-known/jwks.json`), the CDN at `/cdn`, the control API at `/_sim`.

mod accounts;
mod archive;
mod artifacts;
pub mod cli;
mod config;
mod control;
mod faults;
mod handle;
mod http;
mod json_text;
mod jwks;
mod models;
mod queue;
mod record;
mod server;
mod state;
mod storage;
mod webhook;
mod worker;

pub use accounts::KeyKind;
pub use config::{SimConfig, WebhookRequestIdHeader};
pub use faults::{
    FailSpec, HeldWebhookOrder, RequestFaults, SignatureFault, SubmitFault, WebhookFaults,
};
pub use handle::{FalSim, SimError};
pub use record::{
    DeliveryAttempt, QueueState, ReceivedRequest, RequestReport, WebhookOutcome, WebhookReport,
};
