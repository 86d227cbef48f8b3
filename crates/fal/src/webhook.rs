//! Verification of fal's signed webhooks.
//!
//! fal signs `request_id \n user_id \n timestamp \n hex(sha256(raw body))` with ED25519 and sends
//! the hex signature in `X-Fal-Webhook-Signature`. The public keys come from a JWKS; every key is
//! tried. Always verify the raw body bytes exactly as received, before parsing them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

const HEADER_REQUEST_ID: &str = "x-fal-webhook-request-id";
const HEADER_USER_ID: &str = "x-fal-webhook-user-id";
const HEADER_TIMESTAMP: &str = "x-fal-webhook-timestamp";
const HEADER_SIGNATURE: &str = "x-fal-webhook-signature";

/// fal's documented bound on how long keys may be cached.
const MAX_JWKS_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a webhook was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook header {0} is missing")]
    MissingHeader(&'static str),
    #[error("webhook header {0} is not valid")]
    InvalidHeader(&'static str),
    /// The signature is not 128 hex characters (64 bytes).
    #[error("webhook signature is not 64 hex-encoded bytes")]
    MalformedSignature,
    #[error(
        "webhook timestamp is {skew_seconds} s away from now (tolerance {tolerance_seconds} s)"
    )]
    StaleTimestamp {
        skew_seconds: i64,
        tolerance_seconds: u64,
    },
    /// No published key verifies the signature.
    #[error("webhook signature does not verify against any fal key")]
    BadSignature,
    /// The keys could not be fetched: the sender may be genuine, so answer 503 (fal retries),
    /// not 401.
    #[error("fal's webhook keys could not be fetched: {0}")]
    JwksUnavailable(String),
    /// The signature verified but the body is not a fal webhook.
    #[error("verified webhook body is not valid: {0}")]
    MalformedBody(#[source] serde_json::Error),
}

/// `status` of a webhook body (these are not the queue status values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookStatus {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "ERROR")]
    Error,
}

/// A webhook body. `payload` is kept raw: on OK it is the model output (what the result call
/// returns), on ERROR the model's error body, and `null` when fal could not serialise it
/// (then `payload_error` says why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookBody {
    pub request_id: String,
    #[serde(default)]
    pub gateway_request_id: Option<String>,
    pub status: WebhookStatus,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub payload_error: Option<String>,
}

/// A webhook whose signature verified.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedWebhook {
    /// `X-Fal-Webhook-Request-Id` as received.
    pub header_request_id: String,
    /// `X-Fal-Webhook-User-Id`: the fal account the webhook is for.
    pub user_id: String,
    /// `X-Fal-Webhook-Timestamp`, Unix seconds.
    pub timestamp: i64,
    pub body: WebhookBody,
}

/// The signature headers of a callback as received; `None` when absent or not text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `X-Fal-Webhook-Request-Id`.
    pub request_id: Option<String>,
    /// `X-Fal-Webhook-User-Id`.
    pub user_id: Option<String>,
    /// `X-Fal-Webhook-Timestamp`.
    pub timestamp: Option<String>,
    /// `X-Fal-Webhook-Signature`.
    pub signature: Option<String>,
}

impl SignatureHeaders {
    pub fn from_header_map(headers: &HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            request_id: text(HEADER_REQUEST_ID),
            user_id: text(HEADER_USER_ID),
            timestamp: text(HEADER_TIMESTAMP),
            signature: text(HEADER_SIGNATURE),
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Settings of a [`Verifier`].
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// JWKS locations. Their keys are merged; one unreachable location is tolerated while
    /// another answers. The 2025 docs name `rest.alpha.fal.ai`, newer sources `rest.fal.ai`
    /// (uncertain which is current, so both are fetched by default).
    pub jwks_urls: Vec<Url>,
    /// Accepted distance between the timestamp and now (fal: 300 s).
    pub tolerance: Duration,
    /// How long fetched keys are used (capped at 24 h).
    pub cache_ttl: Duration,
    /// Shortest time between two fetches forced by an unverifiable signature.
    pub min_refresh_interval: Duration,
    /// Timeout of one JWKS fetch.
    pub fetch_timeout: Duration,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            jwks_urls: vec![
                Url::parse("https://rest.fal.ai/.well-known/jwks.json").expect("static URL"),
                Url::parse("https://rest.alpha.fal.ai/.well-known/jwks.json").expect("static URL"),
            ],
            tolerance: Duration::from_secs(300),
            cache_ttl: MAX_JWKS_TTL,
            min_refresh_interval: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

impl VerifierConfig {
    /// Defaults with a single JWKS location (e.g. the simulator's).
    pub fn with_jwks_url(url: Url) -> Self {
        Self {
            jwks_urls: vec![url],
            ..Self::default()
        }
    }
}

/// The keys in use and what is known of their fetching; replaced field by field only after a
/// fetch ended, never while one is in flight.
#[derive(Clone, Default)]
struct KeyState {
    keys: Arc<Vec<VerifyingKey>>,
    /// Time of the last successful fetch (the keys' age).
    fetched_at: Option<Instant>,
    /// Start of the last fetch attempt, successful or not (throttles forced refreshes).
    last_attempt: Option<Instant>,
    /// Fetch attempts so far: a caller that waited for a fetch sees it counted, and takes its
    /// outcome instead of fetching again.
    attempts: u64,
    /// Why the last attempt failed, when it did.
    last_failure: Option<String>,
}

/// Verifies fal webhooks. Cheap to clone; clones share the key cache.
///
/// Verification only reads the key state (a lock held for a copy, never across I/O), so
/// requests signed with known keys are never held up by a fetch. At most one fetch is in
/// flight; callers that need fresh keys meanwhile wait for its outcome.
#[derive(Clone)]
pub struct Verifier {
    config: Arc<VerifierConfig>,
    http: reqwest::Client,
    state: Arc<std::sync::Mutex<KeyState>>,
    /// Held by the one fetch in flight.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(mut config: VerifierConfig) -> Self {
        config.cache_ttl = config.cache_ttl.min(MAX_JWKS_TTL);
        let http = reqwest::Client::builder()
            .timeout(config.fetch_timeout)
            .build()
            .unwrap_or_default();
        Self {
            config: Arc::new(config),
            http,
            state: Arc::default(),
            fetching: Arc::default(),
        }
    }

    /// Verifies a webhook against the current time.
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        raw_body: &[u8],
    ) -> Result<VerifiedWebhook, WebhookError> {
        self.verify_at(headers, raw_body, now_unix()).await
    }

    /// Verifies a webhook whose signature headers were taken out of the request.
    pub async fn verify_headers(
        &self,
        headers: &SignatureHeaders,
        raw_body: &[u8],
    ) -> Result<VerifiedWebhook, WebhookError> {
        fn given<'a>(
            value: &'a Option<String>,
            name: &'static str,
        ) -> Result<&'a str, WebhookError> {
            value.as_deref().ok_or(WebhookError::MissingHeader(name))
        }
        let fields = [
            given(&headers.request_id, HEADER_REQUEST_ID)?,
            given(&headers.user_id, HEADER_USER_ID)?,
            given(&headers.timestamp, HEADER_TIMESTAMP)?,
            given(&headers.signature, HEADER_SIGNATURE)?,
        ];
        self.verify_fields(fields, raw_body, now_unix()).await
    }

    /// Verifies a webhook as if the time were `now_unix` (seconds).
    pub async fn verify_at(
        &self,
        headers: &HeaderMap,
        raw_body: &[u8],
        now_unix: i64,
    ) -> Result<VerifiedWebhook, WebhookError> {
        let fields = [
            header(headers, HEADER_REQUEST_ID)?,
            header(headers, HEADER_USER_ID)?,
            header(headers, HEADER_TIMESTAMP)?,
            header(headers, HEADER_SIGNATURE)?,
        ];
        self.verify_fields(fields, raw_body, now_unix).await
    }

    /// Verifies the request id, user id, timestamp and signature header values.
    async fn verify_fields(
        &self,
        [request_id, user_id, timestamp_text, signature_hex]: [&str; 4],
        raw_body: &[u8],
        now_unix: i64,
    ) -> Result<VerifiedWebhook, WebhookError> {
        let timestamp: i64 = timestamp_text
            .trim()
            .parse()
            .map_err(|_| WebhookError::InvalidHeader(HEADER_TIMESTAMP))?;
        let tolerance = self.config.tolerance.as_secs();
        let skew = now_unix
            .checked_sub(timestamp)
            .ok_or(WebhookError::InvalidHeader(HEADER_TIMESTAMP))?;
        if skew.unsigned_abs() > tolerance {
            return Err(WebhookError::StaleTimestamp {
                skew_seconds: skew,
                tolerance_seconds: tolerance,
            });
        }

        let signature_bytes: [u8; 64] = hex::decode(signature_hex.trim())
            .map_err(|_| WebhookError::MalformedSignature)?
            .try_into()
            .map_err(|_| WebhookError::MalformedSignature)?;
        let signature = Signature::from_bytes(&signature_bytes);
        let message = signed_message(request_id, user_id, timestamp_text, raw_body);

        if !self
            .verifies_with_cached_or_fresh_keys(&message, &signature)
            .await?
        {
            return Err(WebhookError::BadSignature);
        }
        let body: WebhookBody =
            serde_json::from_slice(raw_body).map_err(WebhookError::MalformedBody)?;
        Ok(VerifiedWebhook {
            header_request_id: request_id.to_owned(),
            user_id: user_id.to_owned(),
            timestamp,
            body,
        })
    }

    /// Tries the cached keys (fetching them when absent or expired); on failure refreshes once,
    /// unless a refresh happened within `min_refresh_interval` (keys may have rotated, but a
    /// flood of bad signatures must not turn into a flood of fetches).
    async fn verifies_with_cached_or_fresh_keys(
        &self,
        message: &[u8],
        signature: &Signature,
    ) -> Result<bool, WebhookError> {
        let seen = self.key_state();
        let expired = seen
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.config.cache_ttl);
        if !expired {
            if any_key_verifies(&seen.keys, message, signature) {
                return Ok(true);
            }
            let recently = seen
                .last_attempt
                .is_some_and(|at| at.elapsed() < self.config.min_refresh_interval);
            if recently {
                return Ok(false);
            }
            tracing::info!(
                "webhook signature did not verify with cached fal keys; refreshing the JWKS"
            );
        }
        let fresh = self.refresh_after(seen.attempts).await?;
        Ok(any_key_verifies(&fresh.keys, message, signature))
    }

    fn key_state(&self) -> KeyState {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Fresh keys, from the first fetch that ends after `seen_attempts` were counted: this
    /// caller's own, or the one in flight when it asked. A failed fetch keeps the old keys and
    /// their age (they still expire on time) but counts as an attempt, so an outage is not
    /// hammered.
    async fn refresh_after(&self, seen_attempts: u64) -> Result<KeyState, WebhookError> {
        let _fetching = self.fetching.lock().await;
        let current = self.key_state();
        if current.attempts != seen_attempts {
            return match current.last_failure {
                None => Ok(current),
                Some(reason) => Err(WebhookError::JwksUnavailable(reason)),
            };
        }
        let started = Instant::now();
        let fetched = self.fetch_keys().await;
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.attempts += 1;
        state.last_attempt = Some(started);
        match fetched {
            Ok(keys) => {
                state.keys = Arc::new(keys);
                state.fetched_at = Some(Instant::now());
                state.last_failure = None;
                Ok(state.clone())
            }
            Err(error) => {
                state.last_failure = Some(match &error {
                    WebhookError::JwksUnavailable(reason) => reason.clone(),
                    other => other.to_string(),
                });
                Err(error)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<Vec<VerifyingKey>, WebhookError> {
        let mut keys = Vec::new();
        let mut failures = Vec::new();
        for url in &self.config.jwks_urls {
            match self.fetch_one(url).await {
                Ok(mut found) => keys.append(&mut found),
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        if keys.is_empty() {
            let reason = if failures.is_empty() {
                "no usable Ed25519 key published".to_owned()
            } else {
                failures.join("; ")
            };
            tracing::warn!(%reason, "fal JWKS unavailable");
            return Err(WebhookError::JwksUnavailable(reason));
        }
        Ok(keys)
    }

    async fn fetch_one(&self, url: &Url) -> Result<Vec<VerifyingKey>, String> {
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let jwks: Jwks = response
            .json()
            .await
            .map_err(|e| e.without_url().to_string())?;
        Ok(jwks.keys.iter().filter_map(Jwk::verifying_key).collect())
    }
}

#[derive(Deserialize)]
struct Jwks {
    #[serde(default)]
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    #[serde(default)]
    kty: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
}

impl Jwk {
    /// Only `x` is documented; `kty`/`crv`, when present, must say Ed25519.
    fn verifying_key(&self) -> Option<VerifyingKey> {
        if self.kty.as_deref().is_some_and(|k| k != "OKP")
            || self.crv.as_deref().is_some_and(|c| c != "Ed25519")
        {
            return None;
        }
        let x = self.x.as_deref()?.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .ok()?;
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok()
    }
}

fn any_key_verifies(keys: &[VerifyingKey], message: &[u8], signature: &Signature) -> bool {
    keys.iter()
        .any(|k| k.verify_strict(message, signature).is_ok())
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, WebhookError> {
    headers
        .get(name)
        .ok_or(WebhookError::MissingHeader(name))?
        .to_str()
        .map_err(|_| WebhookError::InvalidHeader(name))
}

/// The bytes fal signs: the three header values exactly as received and the lowercase hex
/// SHA-256 of the raw body, joined by `\n` (no trailing newline).
pub fn signed_message(
    request_id: &str,
    user_id: &str,
    timestamp: &str,
    raw_body: &[u8],
) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(raw_body));
    format!("{request_id}\n{user_id}\n{timestamp}\n{digest}").into_bytes()
}
