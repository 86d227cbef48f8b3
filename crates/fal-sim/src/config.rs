//! Simulator settings. Facts the protocol document marks as uncertain are settings here.

use std::net::SocketAddr;
use std::time::Duration;

/// Which id goes into `X-Fal-Webhook-Request-Id` ([UNVERIFIED] in fal's docs; most likely the
/// queue `request_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRequestIdHeader {
    RequestId,
    GatewayRequestId,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Where clients reach the simulator (e.g. `http://fal-sim:9000` in a container network),
    /// used in every URL it hands out; `http://` plus the bound address when `None`.
    pub public_url: Option<String>,
    /// Multiplies every simulated duration (queue work, webhook retry delays, request start
    /// deadlines). 1.0 is fal's real pace; tests use e.g. 0.0005.
    pub time_factor: f64,
    /// Requests of one endpoint running at once (fal: 2 for new accounts, up to 40).
    pub concurrency_per_endpoint: usize,
    /// Validate inputs at submit time (answer 422 immediately) instead of failing the request
    /// once it runs. fal usually accepts the submit and fails the request ([UNVERIFIED] which
    /// inputs are rejected at submit), so the default is `false`.
    pub validate_at_submit: bool,
    /// Fewest images a training archive must hold (fal documents no hard minimum).
    pub min_training_images: usize,
    /// Whether a running request honours a cancel (fal: it "may still complete").
    pub honour_cancel_in_progress: bool,
    /// Whether a cancelled request gets a webhook ([UNVERIFIED]).
    pub webhook_on_cancel: bool,
    /// Delays between webhook delivery attempts, before scaling by `time_factor`. The 2025
    /// docs say "10 retries over 2 hours"; newer notes say up to 31 retries until the result
    /// expires. The default follows the 2025 text.
    pub webhook_retry_delays: Vec<Duration>,
    /// Timeout of one webhook delivery attempt (fal: 15 s). Not scaled: receivers are real.
    pub webhook_timeout: Duration,
    pub webhook_request_id_header: WebhookRequestIdHeader,
    /// Pad the JWKS `x` values with `=` (fal documents no padding; receivers should accept both).
    pub jwks_x_padding: bool,
    /// Seed of the first webhook signing key, for reproducible signatures; random when `None`.
    pub signing_key_seed: Option<[u8; 32]>,
    /// Divides the (large, about 4 MP) output size of the ultra endpoint, to keep tests fast.
    pub ultra_size_divisor: u32,
    /// Largest accepted upload body.
    pub max_upload_bytes: usize,
    /// Interval of `: ping` comments on status streams.
    pub stream_ping_interval: Duration,
    /// Register one valid key at start (see `FalSim::default_key`).
    pub default_key: Option<String>,
    /// Entries kept in the received-request log (oldest dropped first), so a long dev session
    /// does not grow without bound.
    pub max_logged_requests: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            time_factor: 1.0,
            concurrency_per_endpoint: 2,
            validate_at_submit: false,
            min_training_images: 1,
            honour_cancel_in_progress: true,
            webhook_on_cancel: true,
            webhook_retry_delays: [120u64, 240, 360, 480, 600, 720, 900, 1080, 1200, 1500]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            webhook_timeout: Duration::from_secs(15),
            webhook_request_id_header: WebhookRequestIdHeader::RequestId,
            jwks_x_padding: false,
            signing_key_seed: None,
            ultra_size_divisor: 1,
            max_upload_bytes: 1 << 30,
            stream_ping_interval: Duration::from_secs(10),
            default_key: Some("sim-key-id:sim-key-secret".into()),
            max_logged_requests: 10_000,
        }
    }
}

impl SimConfig {
    /// Settings for tests: durations scaled to milliseconds, small ultra images.
    pub fn fast() -> Self {
        Self {
            time_factor: 0.0002,
            ultra_size_divisor: 16,
            stream_ping_interval: Duration::from_millis(200),
            ..Self::default()
        }
    }

    pub(crate) fn scaled(&self, real: Duration) -> Duration {
        real.mul_f64(self.time_factor.max(0.0))
    }
}
