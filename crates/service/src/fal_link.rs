//! The service's connection to fal: client, webhook verifier, and what fal last said about our
//! key (reported by `/readyz`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use secrecy::SecretString;

use crate::config::FalSettings;

/// fal's verdict on our key and account, learned from the last submit.
#[derive(Debug, Default)]
pub struct FalHealth {
    key_rejected: AtomicBool,
    billing_locked: AtomicBool,
}

impl FalHealth {
    pub fn key_rejected(&self) -> bool {
        self.key_rejected.load(Ordering::Relaxed)
    }

    pub fn set_key_rejected(&self, rejected: bool) {
        self.key_rejected.store(rejected, Ordering::Relaxed);
    }

    /// fal refused the last submit because our account is locked (billing).
    pub fn billing_locked(&self) -> bool {
        self.billing_locked.load(Ordering::Relaxed)
    }

    /// Remembers fal's answer to a submit (or an upload before it): refused for the key or
    /// the account, or accepted (`None`).
    pub fn record_refusal(&self, error: Option<&fal::FalError>) {
        self.set_key_rejected(matches!(error, Some(fal::FalError::Unauthorized { .. })));
        self.billing_locked.store(
            matches!(error, Some(fal::FalError::BillingLocked { .. })),
            Ordering::Relaxed,
        );
    }
}

#[derive(Clone)]
pub struct FalLink {
    pub client: fal::FalClient,
    pub verifier: Arc<fal::Verifier>,
    pub health: Arc<FalHealth>,
}

#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct FalSetupError {
    pub variable: &'static str,
    pub problem: String,
}

fn url(variable: &'static str, value: &str) -> Result<url::Url, FalSetupError> {
    url::Url::parse(value).map_err(|e| FalSetupError {
        variable,
        problem: e.to_string(),
    })
}

impl FalLink {
    /// A client for `key` at the configured base URLs.
    pub fn new(settings: &FalSettings, key: SecretString) -> Result<Self, FalSetupError> {
        let mut config = fal::FalConfig::new(key).with_base_urls(
            url("FAL_QUEUE_URL", &settings.queue_url)?,
            url("FAL_REST_URL", &settings.rest_url)?,
            url("FAL_CDN_URL", &settings.cdn_url)?,
        );
        config.retry.submit.max_retries = settings.max_retries;
        // A cancel is owed durably and retried by the reconciler with its own growing wait
        // (`CANCEL_RETRY_INTERVAL`, `CANCEL_MAX_ATTEMPTS`): one call per attempt, so an attempt
        // never holds a worker through the client's own back-off.
        config.retry.cancel = fal::RetryPolicy::none();
        let client = fal::FalClient::new(config)
            .map_err(|e| FalSetupError {
                variable: "FAL_KEY",
                problem: e.to_string(),
            })?
            .with_request_headers(Arc::new(crate::trace_context::FalTraceHeaders));
        let verifier = fal::Verifier::new(fal::VerifierConfig::with_jwks_url(url(
            "FAL_JWKS_URL",
            &settings.jwks_url,
        )?));
        Ok(Self {
            client,
            verifier: Arc::new(verifier),
            health: Arc::new(FalHealth::default()),
        })
    }
}
