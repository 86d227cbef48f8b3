//! W3C trace context: read from requests, kept with jobs, sent on fal calls and webhooks.
//!
//! Spans carry an OpenTelemetry context only when traces are exported (see the `api` crate's
//! telemetry); otherwise every function here does nothing, and jobs keep no `traceparent`.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use safe_fetch::HeaderMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and the only one) this service reads and writes.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` naming `span`, when it belongs to an exported trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` naming the current span.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// Makes `span`, before it is first entered, a child of the span `traceparent` names. A
/// missing or malformed value leaves `span` where it is: a bad header is not an error.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent else {
        return;
    };
    let context = TraceContextPropagator::new().extract(&Traceparent(value.trim()));
    if context.span().span_context().is_remote() {
        // Fails only for a span already entered or not recorded; it then stays where it is.
        let _ = span.set_parent(context);
    }
}

/// Adds the current span's `traceparent` to `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    if let Some(value) = current_traceparent().and_then(|v| v.parse().ok()) {
        headers.insert(TRACEPARENT, value);
    }
}

/// Sends the current span's `traceparent` on every fal call.
pub struct FalTraceHeaders;

impl fal::RequestHeaders for FalTraceHeaders {
    fn add_to(&self, headers: &mut HeaderMap) {
        inject_current(headers);
    }
}

/// One `traceparent` value, as the propagator reads it.
struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        key.eq_ignore_ascii_case(TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_values_are_ignored() {
        for value in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            let context = TraceContextPropagator::new().extract(&Traceparent(value));
            assert!(!context.span().span_context().is_valid(), "{value}");
        }
        let context = TraceContextPropagator::new().extract(&Traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn spans_outside_an_exported_trace_have_no_traceparent() {
        assert_eq!(current_traceparent(), None);
        let mut headers = HeaderMap::new();
        inject_current(&mut headers);
        assert!(headers.is_empty());
    }
}
