//! The request span in OpenTelemetry's terms: its parent from the request's trace context
//! (`traceparent`, through the global propagator) and child spans for the stages embed-core
//! measured (tokenization, queue wait, inference) with their real start and end times.
//!
//! The library exports nothing itself: with no OpenTelemetry layer under `tracing` (or no global
//! tracer provider) these are no-ops. The binary installs both for `--otlp-endpoint`; an
//! application that embeds the router installs its own.

use std::time::{Instant, SystemTime};

use axum::http::HeaderMap;
use embed_core::timing::Phase;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The instrumentation scope of the spans this crate makes.
pub(crate) const SCOPE: &str = "embed-server";

/// Request headers as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// One child span of `span` per phase, named after its stage (`tokenization`, `queue`,
/// `inference`), from its start to its end.
pub(crate) fn export_phases(span: &tracing::Span, phases: &[Phase]) {
    if phases.is_empty() {
        return;
    }
    let parent = span.context();
    if !parent.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer(SCOPE);
    // Instants are monotonic and have no epoch: place them on the wall clock from one reading.
    let (now, wall) = (Instant::now(), SystemTime::now());
    let at = |i: Instant| wall.checked_sub(now.saturating_duration_since(i)).unwrap_or(wall);
    for phase in phases {
        let mut child = tracer.span_builder(phase.stage.name()).with_start_time(at(phase.start)).start_with_context(&tracer, &parent);
        child.end_with_timestamp(at(phase.end));
    }
}

/// Under OpenTelemetry: makes the trace context the request's headers carry (W3C
/// `traceparent`/`tracestate`, read by the global propagator, which the binary sets) the
/// parent of `span` (else it is a new trace's root), names it as the semantic conventions name
/// a server span (`METHOD /route`, the route as matched, never the raw path) and marks it a
/// server span. Without OpenTelemetry the span keeps its plain fields only, so the log lines
/// stay as they were.
pub(crate) fn describe_request(span: &tracing::Span, req: &axum::extract::Request) {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
    let parent = if parent.span().span_context().is_valid() { parent } else { opentelemetry::Context::new() };
    // Before anything else touches the span: once its OpenTelemetry span is started the parent
    // is fixed. Fails when no OpenTelemetry layer records `span`.
    if span.set_parent(parent).is_err() {
        return;
    }
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str());
    span.record("otel.name", format!("{} {route}", req.method()));
    span.record("otel.kind", "server");
}
