//! An OTLP/HTTP trace receiver for tests: `POST /v1/traces` with a protobuf body, decoded with
//! the OpenTelemetry protocol's own messages and kept in arrival order.
//!
//! The tracing subscriber is global to the test process, so there is one receiver per process,
//! served from a thread of its own (it outlives every test's runtime), and the service's span
//! export is installed once, pointing at it. Tests tell their spans apart by trace id.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio::sync::watch;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The `service.name` the test process exports under.
pub const SERVICE_NAME: &str = "avatars-blackbox";

/// One span as the receiver got it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Lowercase hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `service.name` of the resource that sent it.
    pub service_name: Option<String>,
    /// Attributes whose values are strings, integers or booleans, as text.
    pub attributes: Vec<(String, String)>,
    /// Trace ids of the spans this one links to.
    pub linked_trace_ids: Vec<String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// The number of spans received so far.
    arrivals: watch::Sender<usize>,
}

impl OtlpReceiver {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `found` finds what it looks for among every span received so far, looking
    /// again at each export; after `deadline` fails with `what` and `found`'s last complaint.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        deadline: Duration,
        found: impl Fn(&[ReceivedSpan]) -> Result<T, String>,
    ) -> T {
        let mut arrivals = self.arrivals.subscribe();
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let seen = {
                let spans = self.spans.lock().unwrap();
                match found(&spans) {
                    Ok(value) => return value,
                    Err(seen) => seen,
                }
            };
            assert!(tokio::time::Instant::now() < until, "never {what}; {seen}");
            let _ = tokio::time::timeout_at(until, arrivals.changed()).await;
        }
    }

    /// Waits until the spans of `trace_id` satisfy `done`.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        what: &str,
        deadline: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        self.wait_for(what, deadline, |all| {
            let spans: Vec<ReceivedSpan> = all
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if done(&spans) {
                Ok(spans)
            } else {
                let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
                Err(format!("spans of trace {trace_id}: {names:?}"))
            }
        })
        .await
    }
}

/// The process's receiver; the first call starts it and installs the service's span export
/// (as `OTEL_EXPORTER_OTLP_ENDPOINT` would) with a short batch delay.
pub fn receiver() -> &'static OtlpReceiver {
    static RECEIVER: OnceLock<OtlpReceiver> = OnceLock::new();
    RECEIVER.get_or_init(|| {
        let receiver = start();
        let settings = service::config::TraceSettings {
            otlp_endpoint: Some(receiver.base_url()),
            service_name: SERVICE_NAME.into(),
            schedule_delay: Duration::from_millis(50),
        };
        let traces = api::telemetry::Traces::new(&settings)
            .expect("the exporter builds")
            .expect("an endpoint is set");
        tracing_subscriber::registry()
            .with(
                traces
                    .layer()
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            )
            .try_init()
            .expect("no other test installs a global subscriber");
        // Exports for as long as the test process runs.
        std::mem::forget(traces);
        receiver
    })
}

fn start() -> OtlpReceiver {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("local addr");
    let spans = Arc::new(Mutex::new(Vec::new()));
    let arrivals = watch::channel(0).0;
    let state = Shared {
        spans: spans.clone(),
        arrivals: arrivals.clone(),
    };
    std::thread::Builder::new()
        .name("otlp-receiver".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let router = axum::Router::new()
                    .route("/v1/traces", axum::routing::post(export))
                    .with_state(state);
                axum::serve(listener, router)
                    .await
                    .expect("receiver serves");
            });
        })
        .expect("receiver thread");
    OtlpReceiver {
        addr,
        spans,
        arrivals,
    }
}

const PROTOBUF: (axum::http::HeaderName, &str) =
    (axum::http::header::CONTENT_TYPE, "application/x-protobuf");

#[derive(Clone)]
struct Shared {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    arrivals: watch::Sender<usize>,
}

async fn export(State(shared): State<Shared>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, [PROTOBUF], Vec::new());
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans.resource.as_ref().and_then(|resource| {
            resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(text)
        });
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    service_name: service_name.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), text(kv)?)))
                        .collect(),
                    linked_trace_ids: span
                        .links
                        .iter()
                        .map(|l| hex::encode(&l.trace_id))
                        .collect(),
                });
            }
        }
    }
    let count = {
        let mut spans = shared.spans.lock().unwrap();
        spans.extend(received);
        spans.len()
    };
    shared.arrivals.send_replace(count);
    (
        StatusCode::OK,
        [PROTOBUF],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn text(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}
