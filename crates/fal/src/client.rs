//! The HTTP client and its one retry loop.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use rand::Rng;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use url::Url;

use crate::classify::{classify, is_user_timeout, request_id_header, retry_after};
use crate::config::FalConfig;
use crate::error::{FalError, TransportStage};
use crate::retry::{AttemptFailure, Operation, RetryDecision};

/// Headers the caller adds to every request the client sends (a W3C `traceparent`, say).
/// Asked again for each attempt, from within the client's span for the call.
pub trait RequestHeaders: Send + Sync {
    fn add_to(&self, headers: &mut HeaderMap);
}

/// Client of fal's queue and storage APIs. Cheap to clone.
#[derive(Clone)]
pub struct FalClient {
    pub(crate) http: reqwest::Client,
    pub(crate) config: Arc<FalConfig>,
    /// `Key <key>`, marked sensitive so that no formatter prints it.
    auth: HeaderValue,
    extra_headers: Option<Arc<dyn RequestHeaders>>,
}

impl std::fmt::Debug for FalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FalClient")
            .field("queue_url", &self.config.queue_url.as_str())
            .field("rest_url", &self.config.rest_url.as_str())
            .finish_non_exhaustive()
    }
}

/// A successful answer: status, headers and the whole (small) body.
pub(crate) struct Answer {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A failed call, with what the caller needs to classify the outcome.
pub(crate) struct Failure {
    pub error: FalError,
    /// The failure as the retry policy saw it (`None` for errors before sending).
    pub attempt: Option<AttemptFailure>,
}

impl FalClient {
    pub fn new(config: FalConfig) -> Result<Self, FalError> {
        let mut auth = HeaderValue::from_str(&format!("Key {}", config.key.expose_secret()))
            .map_err(|_| {
                FalError::InvalidRequest(
                    "the fal key contains characters not allowed in an HTTP header".into(),
                )
            })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(|e| FalError::transport(TransportStage::Connect, e))?;
        Ok(Self {
            http,
            config: Arc::new(config),
            auth,
            extra_headers: None,
        })
    }

    /// Adds the headers `source` gives to every request, queue and storage alike.
    pub fn with_request_headers(mut self, source: Arc<dyn RequestHeaders>) -> Self {
        self.extra_headers = Some(source);
        self
    }

    pub fn config(&self) -> &FalConfig {
        &self.config
    }

    /// The request with the caller's extra headers, if any.
    pub(crate) fn with_extra_headers(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> reqwest::RequestBuilder {
        let Some(source) = &self.extra_headers else {
            return builder;
        };
        let mut headers = HeaderMap::new();
        source.add_to(&mut headers);
        if headers.is_empty() {
            builder
        } else {
            builder.headers(headers)
        }
    }

    /// Adds the key and `Accept: application/json`.
    pub(crate) fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        self.authorized_accepting(builder, "application/json")
    }

    pub(crate) fn authorized_accepting(
        &self,
        builder: reqwest::RequestBuilder,
        accept: &'static str,
    ) -> reqwest::RequestBuilder {
        builder
            .header(http::header::AUTHORIZATION, self.auth.clone())
            .header(http::header::ACCEPT, accept)
    }

    /// Sends the request built by `build` until it succeeds (2xx) or the operation's retry
    /// policy gives up. `build` is called once per attempt.
    pub(crate) async fn send_with_retry<F>(
        &self,
        op: Operation,
        build: F,
    ) -> Result<Answer, Failure>
    where
        F: Fn() -> Result<reqwest::RequestBuilder, FalError>,
    {
        let policy = self.config.retry.for_operation(op);
        let mut retries_done = 0;
        loop {
            let builder = build().map_err(|error| Failure {
                error,
                attempt: None,
            })?;
            let failure = match self.send_once(builder).await {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            };
            let Some(attempt) = failure.attempt else {
                return Err(failure);
            };
            let jitter = rand::thread_rng().gen::<f64>();
            match policy.decide(op, &attempt, retries_done, jitter) {
                RetryDecision::GiveUp => return Err(failure),
                RetryDecision::RetryAfter(delay) => {
                    tracing::debug!(
                        operation = ?op,
                        retry = retries_done + 1,
                        delay_ms = delay.as_millis() as u64,
                        error = %failure.error,
                        "retrying fal call"
                    );
                    retries_done += 1;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    pub(crate) async fn send_once(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<Answer, Failure> {
        let transport = |e: reqwest::Error| {
            let stage = TransportStage::of(&e);
            Failure {
                error: FalError::transport(stage, e),
                attempt: Some(AttemptFailure::Transport { stage }),
            }
        };
        let response = self
            .with_extra_headers(builder)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(transport)?;
        if status.is_success() {
            return Ok(Answer { headers, body });
        }
        let attempt = AttemptFailure::Status {
            status: status.as_u16(),
            has_request_id: request_id_header(&headers).is_some(),
            user_timeout: is_user_timeout(status, &headers),
            retry_after: retry_after(&headers),
        };
        Err(Failure {
            error: classify(status, &headers, &body),
            attempt: Some(attempt),
        })
    }

    /// True when `url` lies under the configured queue base (same origin and path prefix), so
    /// the key may be sent to it.
    pub(crate) fn is_under_queue_base(&self, url: &Url) -> bool {
        let base = &self.config.queue_url;
        url.origin() == base.origin() && url.path().starts_with(base.path().trim_end_matches('/'))
    }
}

/// Parses a JSON answer body; `context` names the call in the error.
pub(crate) fn decode<T: DeserializeOwned>(
    body: &[u8],
    context: &'static str,
) -> Result<T, FalError> {
    serde_json::from_slice(body).map_err(|source| FalError::Decode { context, source })
}

/// Appends path segments to a base URL, keeping any path prefix of the base.
pub(crate) fn join_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url.set_query(None);
    url
}
