//! API keys the simulator knows and how it answers for them.

use serde::{Deserialize, Serialize};

/// How the simulator treats a registered key. Keys never registered are unknown (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Valid,
    /// 403 "User is locked. Reason: Exhausted balance." on submit and upload.
    BillingLocked,
}

#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub user_id: String,
    pub kind: KeyKind,
}

/// fal's verbatim 401 body for an unknown or revoked key.
pub(crate) const UNKNOWN_KEY_DETAIL: &str = "No user found for Key ID and Secret";
/// fal's 401 body for a key without the `id:secret` shape (status assumed 401).
pub(crate) const MALFORMED_KEY_DETAIL: &str =
    "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'.";
/// fal's verbatim 403 body for a billing lock.
pub(crate) const BILLING_LOCK_DETAIL: &str =
    "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing.";
