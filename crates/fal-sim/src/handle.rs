//! The in-process handle: start, base URLs, keys, fault knobs, reports, shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::accounts::KeyKind;
use crate::config::SimConfig;
use crate::control::release_held_webhooks;
use crate::faults::{HeldWebhookOrder, RequestFaults, SubmitFault};
use crate::jwks::SigningKeys;
use crate::record::{QueueState, ReceivedRequest, RequestReport, WebhookOutcome};
use crate::state::{BaseUrls, Inner, Sim};
use crate::{server, worker};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("fal-sim could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("fal-sim could not build its HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// A running simulator. Dropping it stops accepting connections; [`FalSim::shutdown`] also
/// waits for the listener to close.
pub struct FalSim {
    sim: Arc<Sim>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for FalSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FalSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FalSim {
    /// Binds `config.bind` (port 0 for a free port) and serves in the background.
    pub async fn start(config: SimConfig) -> Result<Self, SimError> {
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.bind,
            source,
        })?;
        let root = match &config.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{addr}"),
        };
        let urls = BaseUrls {
            queue: format!("{root}/queue"),
            rest: format!("{root}/rest"),
            cdn: format!("{root}/cdn"),
            root,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(SimError::HttpClient)?;
        let default_key = config.default_key.clone();
        let sim = Arc::new(Sim {
            keys: Mutex::new(SigningKeys::new(config.signing_key_seed)),
            config,
            urls,
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            http,
            shutdown: CancellationToken::new(),
            held_submits: tokio::sync::Semaphore::new(0),
            held_uploads: tokio::sync::Semaphore::new(0),
        });
        if let Some(key) = default_key {
            sim.register_key(&key, KeyKind::Valid);
        }
        let router = server::router(sim.clone());
        let server = tokio::spawn(server::serve(listener, router, sim.shutdown.clone()));
        tracing::info!(%addr, "fal-sim listening");
        Ok(Self { sim, addr, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn url(text: &str) -> Url {
        Url::parse(text).expect("the simulator's own URLs are valid")
    }

    /// Queue API base (stands in for `https://queue.fal.run`).
    pub fn queue_url(&self) -> Url {
        Self::url(&self.sim.urls.queue)
    }

    /// REST API base (stands in for `https://rest.fal.ai`).
    pub fn rest_url(&self) -> Url {
        Self::url(&self.sim.urls.rest)
    }

    /// CDN base (stands in for `https://v3.fal.media`).
    pub fn cdn_url(&self) -> Url {
        Self::url(&self.sim.urls.cdn)
    }

    /// The JWKS of the webhook signing keys.
    pub fn jwks_url(&self) -> Url {
        Self::url(&format!("{}/.well-known/jwks.json", self.sim.urls.rest))
    }

    /// Base of the `/_sim/` control API.
    pub fn control_url(&self) -> Url {
        Self::url(&format!("{}/_sim", self.sim.urls.root))
    }

    /// The key registered at start (`SimConfig::default_key`), if any.
    pub fn default_key(&self) -> Option<&str> {
        self.sim.config.default_key.as_deref()
    }

    /// Registers (or re-registers) a key; returns the fal user id webhooks carry for it. Keys
    /// never registered answer 401 like an unknown fal key.
    pub fn register_key(&self, key: &str, kind: KeyKind) -> String {
        self.sim.register_key(key, kind)
    }

    /// The next `count` submits suffer `fault` instead of being handled normally.
    pub fn fail_next_submits(&self, count: u32, fault: SubmitFault) {
        self.sim.fail_next_submits(count, fault);
    }

    /// The next `count` status, result, cancel or stream calls answer with `fault` (a
    /// `Respond` fault; `CloseConnection` is ignored for these calls).
    pub fn fail_next_reads(&self, count: u32, fault: SubmitFault) {
        self.sim.fail_next_reads(count, fault);
    }

    /// The next `count` accepted requests (of `endpoint`, or any) carry `faults`.
    pub fn fault_next_requests(&self, count: u32, endpoint: Option<&str>, faults: RequestFaults) {
        self.sim
            .fault_next_requests(count, endpoint.map(str::to_owned), faults);
    }

    /// Replaces the faults of a request that already exists. False when unknown.
    pub fn set_request_faults(&self, request_id: &str, faults: RequestFaults) -> bool {
        self.sim.set_request_faults(request_id, faults)
    }

    /// Lets a stalled request run. False when unknown.
    pub fn release(&self, request_id: &str) -> bool {
        worker::release(&self.sim, request_id)
    }

    /// Lets `count` submit answers held by a `HoldResponse` fault go (now, or as soon as they
    /// are held).
    pub fn release_held_submits(&self, count: usize) {
        self.sim.held_submits.add_permits(count);
    }

    /// The next `count` single-PUT uploads to fal storage are held before their body is
    /// stored, until [`FalSim::release_held_uploads`]: a slow upload.
    pub fn hold_next_uploads(&self, count: u32) {
        self.sim.lock().uploads_to_hold += count;
    }

    /// Lets `count` held uploads finish (now, or as soon as they are held).
    pub fn release_held_uploads(&self, count: usize) {
        self.sim.held_uploads.add_permits(count);
    }

    /// How many uploads were held so far (held now, or released since).
    pub fn uploads_held(&self) -> u32 {
        self.sim.lock().uploads_held
    }

    /// Delivers every held webhook, one after another in `order`. Returns how many.
    pub fn release_held_webhooks(&self, order: HeldWebhookOrder) -> usize {
        release_held_webhooks(&self.sim, order)
    }

    /// Publishes and signs with a new key; the old keys stay in the JWKS when `keep_old`.
    pub fn rotate_signing_key(&self, keep_old: bool) {
        self.sim.rotate_signing_key(keep_old);
    }

    /// Makes the JWKS answer 503 (or work again).
    pub fn set_jwks_down(&self, down: bool) {
        self.sim.set_jwks_down(down);
    }

    /// Expires a CDN object now (by its public URL), as its lifecycle would: reads answer 404
    /// and runners cannot fetch it (e.g. a trained LoRA past fal's retention). False when
    /// unknown.
    pub fn expire_file(&self, url: &str) -> bool {
        self.sim.expire_file(url)
    }

    /// Forgets pending submit/request faults and brings the JWKS back.
    pub fn clear_faults(&self) {
        self.sim.clear_faults();
    }

    /// Every request received so far (control API excluded), oldest first.
    pub fn received_requests(&self) -> Vec<ReceivedRequest> {
        self.sim.received()
    }

    pub fn clear_received_requests(&self) {
        self.sim.clear_received();
    }

    pub fn request(&self, request_id: &str) -> Option<RequestReport> {
        self.sim.report(request_id)
    }

    pub fn requests(&self) -> Vec<RequestReport> {
        self.sim.reports()
    }

    /// Signs a webhook body with the current key, for tests that post deliveries themselves.
    /// Returns the four `X-Fal-Webhook-*` headers as (name, value).
    pub fn webhook_headers(
        &self,
        request_id: &str,
        user_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Vec<(String, String)> {
        let timestamp = timestamp.to_string();
        let signature = self
            .sim
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sign(false, request_id, user_id, &timestamp, body);
        vec![
            ("x-fal-webhook-request-id".into(), request_id.into()),
            ("x-fal-webhook-user-id".into(), user_id.into()),
            ("x-fal-webhook-timestamp".into(), timestamp),
            ("x-fal-webhook-signature".into(), signature),
        ]
    }

    /// Waits until `condition` holds, re-checking on every state change; fails after `timeout`.
    pub async fn wait_until<F>(
        &self,
        timeout: Duration,
        what: &str,
        mut condition: F,
    ) -> Result<(), SimError>
    where
        F: FnMut(&FalSim) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.sim.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(self) {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(SimError::Timeout(timeout, what.to_owned()));
            }
            // Also wake periodically: some conditions depend on time, not on state changes.
            let wake = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(wake, notified).await;
        }
    }

    /// Waits until a request is COMPLETED.
    pub async fn wait_for_completion(
        &self,
        request_id: &str,
        timeout: Duration,
    ) -> Result<RequestReport, SimError> {
        self.wait_until(
            timeout,
            &format!("request {request_id} to complete"),
            |sim| {
                sim.request(request_id)
                    .is_some_and(|r| r.state == QueueState::Completed)
            },
        )
        .await?;
        Ok(self
            .request(request_id)
            .expect("request exists once completed"))
    }

    /// Waits until a request's webhook delivery is settled (delivered, failed or dropped).
    pub async fn wait_for_webhook(
        &self,
        request_id: &str,
        timeout: Duration,
    ) -> Result<RequestReport, SimError> {
        self.wait_until(timeout, &format!("webhook of {request_id}"), |sim| {
            sim.request(request_id).is_some_and(|r| {
                matches!(
                    r.webhook.outcome,
                    WebhookOutcome::Delivered | WebhookOutcome::Failed | WebhookOutcome::Dropped
                )
            })
        })
        .await?;
        Ok(self.request(request_id).expect("request exists"))
    }

    /// Stops serving and cancels pending webhook retries.
    pub async fn shutdown(mut self) {
        self.sim.shutdown.cancel();
        let _ = (&mut self.server).await;
    }
}

impl Drop for FalSim {
    fn drop(&mut self) {
        self.sim.shutdown.cancel();
    }
}
