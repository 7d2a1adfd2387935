//! The `embed-server` binary's traces and logs. With `--otlp-endpoint`, a collector written here
//! (an OTLP/gRPC trace receiver: opentelemetry-proto's tonic service on loopback) receives one
//! trace per request, the request's span with a child span per stage (tokenization, queue,
//! inference) at real times, and a client's `traceparent` as that span's parent. The exporter
//! batches; the server's shutdown flushes it, so the test stops the server instead of sleeping.
//! With `--json-output` every log line is one JSON object, the request's span fields with it.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use embed_testkit::TinyModel;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;

/// Every span received, with the `service.name` of its resource.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic_otlp::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic_otlp::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic_otlp::Response<ExportTraceServiceResponse>, tonic_otlp::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic_otlp::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_trace_with_its_stages_and_the_callers_parent() {
    let _gate = embed_testkit::module_gate(module_path!());
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(collector.clone());
    let receiver = tokio::spawn(
        tonic_otlp::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic_otlp::transport::server::TcpIncoming::from(listener)),
    );

    let (_dir, model) = TinyModel::default().write_temp();
    let model = format!("tiny={}", model.display());
    let args = ["--model", &model, "--otlp-endpoint", &endpoint, "--otlp-service-name", "embed-test"];
    let server = Server::start(&args);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;

    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traced = client
        .post(format!("{}/embed", server.base))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"inputs": "a traced request"}))
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 200);
    let plain = client.post(format!("{}/embed", server.base)).json(&json!({"inputs": ["one", "two"]})).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["x-compute-type"], "cpu");

    server.signal(libc::SIGTERM);
    let (code, log) = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(60))).await.unwrap();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("traces flushed"), "{log}");
    receiver.abort();

    let spans = collector.spans.lock().unwrap().clone();
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert!(spans.iter().all(|(service, _)| service == "embed-test"), "{spans:?}");
    let requests: Vec<&Span> = spans.iter().map(|(_, s)| s).filter(|s| s.name == "POST /embed").collect();
    assert_eq!(requests.len(), 2, "one span per /embed request: {names:?}");
    assert_ne!(requests[0].trace_id, requests[1].trace_id, "one trace per request");
    let traced_span = requests.iter().find(|s| hex(&s.trace_id) == trace_id).expect("the caller's trace id is kept");
    assert_eq!(hex(&traced_span.parent_span_id), caller_span, "the caller's span is the parent");
    let plain_span = requests.iter().find(|s| hex(&s.trace_id) != trace_id).unwrap();
    assert!(plain_span.parent_span_id.is_empty(), "without traceparent the request starts a trace");

    for request in requests {
        assert_eq!(request.kind, SpanKind::Server as i32);
        let mut children: Vec<&Span> =
            spans.iter().map(|(_, s)| s).filter(|s| s.trace_id == request.trace_id && s.parent_span_id == request.span_id).collect();
        children.sort_by_key(|s| s.start_time_unix_nano);
        let stages: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(stages, ["tokenization", "queue", "inference"], "{names:?}");
        for child in &children {
            assert!(child.start_time_unix_nano <= child.end_time_unix_nano, "{child:?}");
            assert!(request.start_time_unix_nano <= child.start_time_unix_nano, "{child:?} starts in {request:?}");
            assert!(child.end_time_unix_nano <= request.end_time_unix_nano, "{child:?} ends in {request:?}");
        }
        assert!(children[0].end_time_unix_nano <= children[1].start_time_unix_nano, "tokenized, then queued");
        assert_eq!(children[1].end_time_unix_nano, children[2].start_time_unix_nano, "inference starts as the wait ends");
        assert!(children[2].end_time_unix_nano > children[2].start_time_unix_nano, "a forward pass takes time");
    }
    // Probes are traced too (they are requests), as their own traces without stages.
    assert!(names.contains(&"GET /ready"), "{names:?}");
}

/// `--json-output`: every line on stderr is one JSON object with level, time and message; a
/// line inside a request carries the request's span fields (its id as the response header
/// gives it, method and path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_one_object_per_line_with_the_request_span() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_dir, model) = TinyModel::default().write_temp();
    let model = format!("tiny={}", model.display());
    let server = Server::start_with(&["--model", &model, "--json-output"], |cmd| {
        // The request's "finished processing" line is tower-http's, at debug.
        cmd.env("EMBED_LOG", "info,tower_http=debug");
    });
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let resp = client.post(format!("{}/embed", server.base)).json(&json!({"inputs": "logged"})).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    server.signal(libc::SIGTERM);
    let (code, log) = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(60))).await.unwrap();
    assert_eq!(code, 0, "{log}");

    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}\n{log}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        assert!(line["level"].is_string() && line["timestamp"].is_string() && line["message"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l["message"] == "listening" && l["addr"].is_string()), "event fields at the top level:\n{log}");
    let in_request: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["request_id"] == request_id.as_str()))).collect();
    assert!(!in_request.is_empty(), "no line carries request {request_id}:\n{log}");
    for line in in_request {
        let span = line["spans"].as_array().unwrap().iter().find(|s| s["name"] == "request").unwrap();
        assert_eq!((&span["method"], &span["path"]), (&json!("POST"), &json!("/embed")), "{line}");
    }
}
