//! The binary's logs and traces: text or JSON lines on stderr (`--json-output`), and with
//! `--otlp-endpoint` the request spans exported to an OpenTelemetry collector as OTLP over gRPC
//! (as text-embeddings-inference exports them), with the W3C trace-context propagator reading
//! `traceparent`.

use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::cli::TelemetrySettings;

/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed trace exporter, if any; [`Telemetry::shutdown`] flushes it.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global `tracing` subscriber: the log lines (filtered by `EMBED_LOG`, default
/// `info`) and, with OTLP, the OpenTelemetry layer (spans at `info` and above, whatever
/// `EMBED_LOG` says, so quieter logs do not lose traces). Must run inside the Tokio runtime
/// (the gRPC exporter's connection lives there).
pub(crate) fn init(settings: &TelemetrySettings) -> Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMBED_LOG").unwrap_or_else(|_| "info,tower_http=info".into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if settings.json {
        // One JSON object per line: the event's fields at the top level beside level, time and
        // target, and `spans`, the fields of the spans it happened in (the request's
        // `request_id`, `method` and `path`), as TEI's --json-output writes them.
        logs.json().flatten_event(true).with_current_span(false).with_span_list(true).with_filter(filter).boxed()
    } else {
        logs.with_target(false).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_filter(filter).boxed()
    };
    let (provider, traces) = match &settings.otlp {
        None => (None, None),
        Some(otlp) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(otlp.endpoint.clone())
                .build()
                .with_context(|| format!("--otlp-endpoint {}: building the OTLP exporter", otlp.endpoint))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(otlp.service_name.clone()).build())
                .build();
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            opentelemetry::global::set_tracer_provider(provider.clone());
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("embed-server"))
                .with_filter(LevelFilter::INFO);
            (Some(provider), Some(layer))
        }
    };
    tracing_subscriber::registry().with(logs).with(traces).init();
    if let Some(otlp) = &settings.otlp {
        tracing::info!(endpoint = %otlp.endpoint, service_name = %otlp.service_name, "exporting traces (OTLP over gRPC)");
    }
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter (at most [`FLUSH_TIMEOUT`]); a
    /// collector that cannot be reached is logged, not fatal.
    pub(crate) fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        // Blocks until the batch is exported, which needs the runtime's other threads for the
        // gRPC connection.
        match tokio::task::block_in_place(|| provider.shutdown_with_timeout(FLUSH_TIMEOUT)) {
            Ok(()) => tracing::info!("traces flushed"),
            Err(e) => tracing::warn!(error = %e, "the last traces could not be exported"),
        }
    }
}
