//! Structured logs on stderr: text for people, JSON (`LOG_FORMAT=json`) for machines. Each request's
//! lines carry its request id through the request span.
//!
//! Spans are also exported over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set:
//! batched on a thread of their own, sent every `OTEL_BSP_SCHEDULE_DELAY`, and flushed when the
//! process stops. Without it there is no exporter and no OpenTelemetry layer at all.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::{Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::server_timing::{DatabaseTimeLayer, SQLX_STATEMENTS};

use service::config::{LogFormat, TraceSettings};

const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=info";

/// The export of spans to an OpenTelemetry collector.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// The exporter `settings` describe; `None` when no endpoint is set.
    pub fn new(settings: &TraceSettings) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = &settings.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .build()?;
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(settings.schedule_delay)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Some(Self { provider }))
    }

    /// The layer that turns `tracing` spans into exported OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("avatars"))
            .with_threads(false)
    }

    /// Sends the spans not yet exported and stops the exporter. Blocks until done.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("error: flushing traces: {error}");
        }
    }
}

/// Installs the process's subscriber: logs filtered by `RUST_LOG`, spans to the collector when
/// there is one, and each request's database time when `database_time` (`SERVER_TIMING`).
pub fn init(format: LogFormat, traces: Option<&Traces>, database_time: bool) {
    // One filter per layer, so that the statements the database-time layer reads are not
    // logged because of it.
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let statements = database_time.then(|| {
        DatabaseTimeLayer.with_filter(Targets::new().with_target(SQLX_STATEMENTS, Level::DEBUG))
    });
    let registry = tracing_subscriber::registry()
        .with(statements)
        .with(traces.map(|traces| traces.layer().with_filter(filter())));
    // try_init: a second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .with_filter(filter()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(filter()),
            )
            .try_init(),
    };
}
