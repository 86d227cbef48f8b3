//! Client configuration: base URLs, key, timeouts, retry and upload settings.

use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::retry::RetryPolicies;

/// Settings of a [`crate::FalClient`].
///
/// Every base URL is configurable so that the simulator (or a proxy) can stand in for fal.
#[derive(Debug, Clone)]
pub struct FalConfig {
    /// `<key_id>:<key_secret>`, sent as `Authorization: Key ...`. Never logged.
    pub key: SecretString,
    /// Queue API base, `https://queue.fal.run`.
    pub queue_url: Url,
    /// REST API base (storage), `https://rest.fal.ai`.
    pub rest_url: Url,
    /// Public CDN base of uploaded and generated files, `https://v3.fal.media`.
    pub cdn_url: Url,
    /// Connect timeout of every call.
    pub connect_timeout: Duration,
    /// Whole-call timeout of queue calls (not of uploads, which are bounded by
    /// `upload_timeout`).
    pub request_timeout: Duration,
    /// Whole-call timeout of one upload PUT.
    pub upload_timeout: Duration,
    pub retry: RetryPolicies,
    /// Uploads larger than this use the multipart flow (fal-js switches above 90 MB).
    pub multipart_threshold: u64,
    /// Size of one multipart part (fal-js: 10 MiB).
    pub multipart_part_size: u64,
    /// `storage_type` query parameter of the storage initiate calls.
    pub storage_type: String,
    /// `User-Agent` of every call.
    pub user_agent: String,
}

impl FalConfig {
    /// Production hosts with the default timeouts and retry policies.
    pub fn new(key: SecretString) -> Self {
        Self {
            key,
            queue_url: Url::parse("https://queue.fal.run").expect("static URL"),
            rest_url: Url::parse("https://rest.fal.ai").expect("static URL"),
            cdn_url: Url::parse("https://v3.fal.media").expect("static URL"),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(30 * 60),
            retry: RetryPolicies::default(),
            multipart_threshold: 90 * 1024 * 1024,
            multipart_part_size: 10 * 1024 * 1024,
            storage_type: "fal-cdn-v3".into(),
            user_agent: concat!("avatars-fal/", env!("CARGO_PKG_VERSION")).into(),
        }
    }

    /// Points the queue, REST and CDN bases elsewhere (e.g. at the simulator).
    pub fn with_base_urls(mut self, queue_url: Url, rest_url: Url, cdn_url: Url) -> Self {
        self.queue_url = queue_url;
        self.rest_url = rest_url;
        self.cdn_url = cdn_url;
        self
    }
}
