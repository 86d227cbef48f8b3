//! A webhook receiver for tests: an HTTP server on a loopback port that records every request
//! (path, headers, raw body, arrival order) and answers from a script the test programs.
//!
//! Answers come from a queue of [`Reply`]s, then from a default (200 unless changed). A
//! [`Reply::Hold`] records the request, lets the test know, and answers only once the test
//! calls [`Receiver::release`]. Waits are event-driven and bounded by a deadline.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the receiver answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// This status, with a short text body.
    Status(u16),
    /// `302 Found` with `Location` pointing at this path of the same receiver.
    Redirect(String),
    /// Record the request, then wait for [`Receiver::release`] before answering this status.
    Hold(u16),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Position in arrival order, from 0.
    pub seq: usize,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Recorded {
    /// A header's value as text; panics when it is missing or not text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("request #{} has no {name} header", self.seq))
            .to_str()
            .expect("header is text")
    }

    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id")
    }

    pub fn webhook_timestamp(&self) -> i64 {
        self.header("webhook-timestamp")
            .parse()
            .expect("webhook-timestamp is an integer")
    }

    /// Checks the Standard Webhooks signature with `secret` (independent verifier).
    pub fn verify(&self, secret: &str) -> Result<(), crate::standard_webhooks::VerifyError> {
        crate::standard_webhooks::verify(
            secret,
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
            &self.body,
        )
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

struct Script {
    queue: VecDeque<Reply>,
    default: Reply,
    requests: Vec<Recorded>,
}

struct Shared {
    addr: SocketAddr,
    script: Mutex<Script>,
    /// Bumped after every recorded request.
    arrivals: watch::Sender<usize>,
    /// Held requests are answered once this is `true`.
    released: watch::Sender<bool>,
}

/// A running receiver. Stops serving when dropped.
pub struct Receiver {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on `127.0.0.1:0` that answers 200 until scripted otherwise.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            addr,
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                default: Reply::Status(200),
                requests: Vec::new(),
            }),
            arrivals: watch::channel(0).0,
            released: watch::channel(false).0,
        });
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("receiver serves");
        });
        Receiver { shared, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.shared.addr, path)
    }

    /// Queues replies for the next requests, after any already queued.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().queue.extend(replies);
    }

    /// The reply once the queue is empty.
    pub fn set_default(&self, reply: Reply) {
        self.lock().default = reply;
    }

    /// Answers every held request, and every later [`Reply::Hold`] at once.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The requests to `path`, in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until the requests so far satisfy `done`, and returns them; `None` when the
    /// deadline passes first.
    pub async fn try_wait_for(
        &self,
        deadline: Duration,
        mut done: impl FnMut(&[Recorded]) -> bool,
    ) -> Option<Vec<Recorded>> {
        let until = tokio::time::Instant::now() + deadline;
        let mut arrivals = self.shared.arrivals.subscribe();
        loop {
            arrivals.borrow_and_update();
            let requests = self.requests();
            if done(&requests) {
                return Some(requests);
            }
            match tokio::time::timeout_at(until, arrivals.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    let requests = self.requests();
                    return done(&requests).then_some(requests);
                }
            }
        }
    }

    /// Like [`Receiver::try_wait_for`], panicking with `what` and the requests so far when the
    /// deadline passes.
    pub async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        done: impl FnMut(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        match self.try_wait_for(deadline, done).await {
            Some(requests) => requests,
            None => panic!(
                "receiver {}: {what} did not happen within {deadline:?}; got {}",
                self.addr(),
                describe(&self.requests())
            ),
        }
    }

    /// Waits until at least `count` requests arrived at `path`; returns those.
    pub async fn wait_for_requests_to(
        &self,
        path: &str,
        count: usize,
        deadline: Duration,
    ) -> Vec<Recorded> {
        self.wait_for(
            &format!("{count} request(s) to {path}"),
            deadline,
            |requests| requests.iter().filter(|r| r.path == path).count() >= count,
        )
        .await;
        self.requests_to(path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.shared.script.lock().expect("receiver lock")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.released.send_replace(true);
        self.server.abort();
    }
}

/// A short description of requests for failure messages.
pub fn describe(requests: &[Recorded]) -> String {
    let lines: Vec<String> = requests
        .iter()
        .map(|r| {
            format!(
                "#{} {} {} webhook-id={:?} body={}",
                r.seq,
                r.method,
                r.path,
                r.headers.get("webhook-id"),
                String::from_utf8_lossy(&r.body)
            )
        })
        .collect();
    format!("{} request(s)\n{}", requests.len(), lines.join("\n"))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut script = shared.script.lock().expect("receiver lock");
        let reply = script
            .queue
            .pop_front()
            .unwrap_or_else(|| script.default.clone());
        let seq = script.requests.len();
        script.requests.push(Recorded {
            seq,
            method,
            path: uri.path().to_string(),
            headers,
            body,
            at: Instant::now(),
        });
        reply
    };
    shared.arrivals.send_modify(|n| *n += 1);
    match reply {
        Reply::Status(status) => status_response(status),
        Reply::Redirect(path) => (
            StatusCode::FOUND,
            [("location", format!("http://{}{}", shared.addr, path))],
            "moved",
        )
            .into_response(),
        Reply::Hold(status) => {
            let mut released = shared.released.subscribe();
            // An error means the receiver is gone; answer anyway.
            let _ = released.wait_for(|released| *released).await;
            status_response(status)
        }
    }
}

fn status_response(status: u16) -> Response {
    let status = StatusCode::from_u16(status).expect("valid status");
    (status, format!("receiver says {}", status.as_u16())).into_response()
}

/// Settings for an app whose events go to test receivers: fast event workers, a tiny retry
/// schedule, plain http, and the receivers' exact addresses allowed although they are loopback.
pub fn fast_events(settings: &mut api::Settings, receivers: &[SocketAddr]) {
    settings.fetch.allow_http = true;
    settings.fetch.allowed_private = receivers.to_vec();
    settings.events.retry_scale = 0.001;
    settings.events.relay_poll = Duration::from_millis(20);
    settings.events.sequencer_poll = Duration::from_millis(20);
}
