//! In-process router tests (no socket): every route, status code and error shape.

use crate::common;

use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use base64::Engine;
use embed_core::FaultInjection;
use embed_server::{router, Limits, ServerConfig, Timeouts};
use serde_json::{json, Value};

use common::inproc::{self, Fixture};

fn fixture_with(config: impl FnOnce(ServerConfig) -> ServerConfig, faults: FaultInjection) -> Fixture {
    inproc::fixture(2, config, faults, |r| r)
}

fn fixture() -> Fixture {
    fixture_with(|c| c, FaultInjection::default())
}

fn app(f: &Fixture) -> Router {
    f.app.clone()
}

async fn call(app: &Router, method: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> (StatusCode, Value, axum::http::HeaderMap) {
    inproc::send(app, method, path, body.map(|b| b.to_string()).as_deref(), headers).await
}

async fn raw(app: &Router, path: &str, body: &str) -> (StatusCode, Value) {
    let (status, v, _) = inproc::send(app, "POST", path, Some(body), &[]).await;
    (status, v)
}

fn assert_tei_error(v: &Value, needle: &str) {
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("not a TEI error: {v}"));
    assert!(v["error_type"].is_string(), "{v}");
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

fn assert_openai_error(v: &Value, needle: &str) {
    let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("not an OpenAI error: {v}"));
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

#[tokio::test]
async fn health_ready_and_preload() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture();
    let app = app(&f);
    let (s, v, h) = call(&app, "GET", "/health", None, &[]).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    assert!(h.contains_key("x-request-id"), "every response carries a request id");
    let (s, _, _) = call(&app, "GET", "/ready", None, &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "not ready before preload");
    f.state.preload().await.unwrap();
    let (s, _, _) = call(&app, "GET", "/ready", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    f.state.pool().close().await;
}

#[tokio::test]
async fn tei_embed() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture();
    let app = app(&f);
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "hello world"})), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].as_array().unwrap().len(), 32);
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": ["a", "b", "c"], "normalize": false})), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let norm: f64 = v[0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap().powi(2)).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "normalize=false honoured");
    // Another registered model by name (extension).
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "x", "model": "other"})), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0].as_array().unwrap().len(), 16);
    f.state.pool().close().await;
}

#[tokio::test]
async fn tei_errors() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture_with(|c| c.with_limits(Limits { max_inputs: 4, max_body_bytes: 4096, ..Limits::default() }), FaultInjection::default());
    let app = app(&f);
    let (s, v) = raw(&app, "/embed", "{\"inputs\": [").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].is_string(), "{v}");
    let (s, v) = raw(&app, "/embed", "{\"inputs\": 42}").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["error"].is_string(), "{v}");
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": []})), &[]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_tei_error(&v, "empty");
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": vec!["a"; 5]})), &[]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_tei_error(&v, "max_inputs");
    let big = "x".repeat(5000);
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": big})), &[]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_tei_error(&v, "4096");
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "x", "model": "nope"})), &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_tei_error(&v, "nope");
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "x", "model": "../../etc"})), &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "path-like names never load files: {v}");
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "x", "model": "/etc"})), &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let long = "hello world ".repeat(100);
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": long, "truncate": false})), &[]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_tei_error(&v, "limit of 64");
    let (s, _, _) = call(&app, "POST", "/embed", Some(json!({"inputs": long})), &[]).await;
    assert_eq!(s, StatusCode::OK, "truncation is the default");
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "x", "prompt_name": "nope"})), &[]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_tei_error(&v, "nope");
    let (s, v, _) = call(&app, "GET", "/nowhere", None, &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_tei_error(&v, "/nowhere");
    f.state.pool().close().await;
}

#[tokio::test]
async fn openai_embeddings() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture();
    let app = app(&f);
    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": ["hello", "world"], "model": "tiny"})), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["object"], "embedding");
    let floats: Vec<f32> = v["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(floats.len(), 32);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() >= 6);
    assert_eq!(v["usage"]["prompt_tokens"], v["usage"]["total_tokens"]);

    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": "hello", "model": "tiny", "encoding_format": "base64"})), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let bytes = base64::engine::general_purpose::STANDARD.decode(v["data"][0]["embedding"].as_str().unwrap()).unwrap();
    assert_eq!(bytes.len(), 4 * floats.len(), "base64 holds one little-endian f32 per dimension");
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    // Lengths checked, and a NaN on either side fails.
    let d = embed_testkit::max_abs_diff(&decoded, &floats);
    assert!(d < 1e-6, "base64 and float encodings differ by {d}");

    // Token arrays: the ids of "hello" as the tokenizer gives them.
    let (_, tok, _) = call(&app, "POST", "/tokenize", Some(json!({"inputs": "hello"})), &[]).await;
    let ids: Vec<u64> = tok[0].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": ids, "model": "tiny"})), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let from_ids: Vec<f32> = v["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    // `floats` came from a padded batch of two; equal up to float rounding.
    assert!(embed_testkit::max_abs_diff(&from_ids, &floats) <= 1e-5);
    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": [[2, 5, 3], [2, 6, 3]], "model": "tiny"})), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);

    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": "x", "model": "tiny", "dimensions": 32, "user": "u1"})), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v, _) = call(&app, "GET", "/v1/models", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"tiny") && ids.contains(&"other"));
    f.state.pool().close().await;
}

#[tokio::test]
async fn openai_errors() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture();
    let app = app(&f);
    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": "x", "model": "nope"})), &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_openai_error(&v, "nope");
    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": [], "model": "tiny"})), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_openai_error(&v, "empty");
    assert_eq!(v["error"]["param"], "input");
    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": "x", "model": "tiny", "dimensions": 33})), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_openai_error(&v, "dimensions=33");
    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": "x", "encoding_format": "hex"})), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].is_string(), "{v}");
    let (s, v) = raw(&app, "/v1/embeddings", "not json").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].is_string(), "{v}");
    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": [[2, 999999]], "model": "tiny"})), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_openai_error(&v, "999999");
    f.state.pool().close().await;
}

#[tokio::test]
async fn tokenize_info_models_and_admin() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture();
    let app = app(&f);
    let (s, v, _) = call(&app, "POST", "/tokenize", Some(json!({"inputs": ["hello world"]})), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let toks: Vec<&str> = v[0].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(toks, vec!["[CLS]", "hello", "world", "[SEP]"]);
    let (s, v, _) = call(&app, "GET", "/info", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((v["dimension"].as_u64(), v["max_input_length"].as_u64()), (Some(32), Some(64)));
    // Loaded from a temporary directory: named by its configured name, not by the host path.
    assert_eq!(v["model_source"], "tiny", "{v}");
    let tmp = f.tmp[0].path().to_string_lossy().into_owned();
    assert!(!v.to_string().contains(&tmp), "/info shows the host path {tmp}: {v}");

    let (s, v, _) = call(&app, "POST", "/models/other/load", None, &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v, _) = call(&app, "GET", "/models", None, &[]).await;
    let loaded: Vec<&str> = v["loaded"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(loaded.contains(&"other") && loaded.contains(&"tiny"), "{v}");
    assert!(v["loaded"][0]["weight_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["loaded"][0]["dtype"], "f32");
    assert_eq!(v["loaded"][0]["device"], "cpu");
    let sources: Vec<(&str, &str)> =
        v["registered"].as_array().unwrap().iter().map(|m| (m["name"].as_str().unwrap(), m["source"].as_str().unwrap())).collect();
    assert!(sources.contains(&("tiny", "tiny")) && sources.contains(&("other", "other")), "{v}");
    for t in &f.tmp {
        let tmp = t.path().to_string_lossy().into_owned();
        assert!(!v.to_string().contains(&tmp), "/models shows the host path {tmp}: {v}");
    }
    let (s, v, _) = call(&app, "POST", "/models/other/unload", None, &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["model_weight_bytes"].as_u64().unwrap() > 0);
    let (_, v, _) = call(&app, "GET", "/models", None, &[]).await;
    assert!(!v["loaded"].as_array().unwrap().iter().any(|m| m["name"] == "other"));
    let (s, v, _) = call(&app, "POST", "/models/nope/load", None, &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_tei_error(&v, "nope");
    let (s, _, _) = call(&app, "POST", "/models/nope/unload", None, &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The pool's history: other loaded, then released on request.
    let (s, v, _) = call(&app, "GET", "/models/events", None, &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let other: Vec<(&str, Value)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["model"] == "other")
        .map(|e| (e["action"].as_str().unwrap(), e["cause"].clone()))
        .collect();
    assert_eq!(other, [("loaded", Value::Null), ("unloaded", json!("explicit"))], "{v}");
    assert!(v["events"][0]["at"].as_f64().unwrap() > 1.7e9 && v["events"][0]["duration_ms"].as_f64().unwrap() > 0.0, "{v}");

    let (s, body, h) = call(&app, "GET", "/metrics", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = body.as_str().unwrap();
    for needle in [
        "embed_http_requests_total{route=\"/tokenize\",status=\"200\"}",
        "embed_http_request_duration_seconds_bucket",
        "embed_models_loaded 1",
        "embed_pool_evictions_total{cause=\"explicit\"} 1",
        "embed_memory_resident_bytes",
        "embed_tokens_total",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    f.state.pool().close().await;
}

#[tokio::test]
async fn api_key_protects_everything_but_health_and_metrics() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture_with(|c| c.with_api_key(Some("s3cret".into())), FaultInjection::default());
    let app = app(&f);
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "x"})), &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_tei_error(&v, "API key");
    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": "x"})), &[("authorization", "Bearer wrong")]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_openai_error(&v, "API key");
    let (s, _, _) = call(&app, "POST", "/models/tiny/load", None, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "admin needs the key");
    let (s, _, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "x"})), &[("authorization", "Bearer s3cret")]).await;
    assert_eq!(s, StatusCode::OK);
    for open in ["/health", "/metrics"] {
        let (s, _, _) = call(&app, "GET", open, None, &[]).await;
        assert_eq!(s, StatusCode::OK, "{open} is open");
    }
    f.state.pool().close().await;
}

#[tokio::test]
async fn overload_gets_429_and_timeouts_504() {
    let _gate = embed_testkit::module_gate(module_path!());
    let faults = FaultInjection { forward_delay: Some(Duration::from_millis(400)), ..Default::default() };
    let f = fixture_with(
        |c| c.with_limits(Limits { max_concurrent: 1, ..Limits::default() }).with_timeouts(Timeouts { request: Duration::from_millis(1500), ..Timeouts::default() }),
        faults,
    );
    f.state.preload().await.unwrap();
    let app = app(&f);
    let slow = {
        let app = app.clone();
        tokio::spawn(async move { call(&app, "POST", "/embed", Some(json!({"inputs": "slow"})), &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, v, h) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": "x"})), &[]).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h["retry-after"], "1");
    assert_openai_error(&v, "limit 1");
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);

    // Four inputs that each take 400 ms in separate forward passes would exceed 1.5 s.
    let inputs: Vec<String> = (0..4).map(|i| "hello ".repeat(10 + i * 10)).collect();
    let f2 = fixture_with(
        |c| c.with_timeouts(Timeouts { request: Duration::from_millis(300), ..Timeouts::default() }),
        FaultInjection { forward_delay: Some(Duration::from_millis(400)), ..Default::default() },
    );
    f2.state.preload().await.unwrap();
    let (s, v, _) = call(&router(f2.state.clone()), "POST", "/embed", Some(json!({"inputs": inputs})), &[]).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert_tei_error(&v, "did not finish");
    f.state.pool().close().await;
    f2.state.pool().close().await;
}

#[tokio::test]
async fn worker_panic_is_a_500_and_the_server_lives_on() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture_with(|c| c, FaultInjection { panic_on_text: Some("boom".into()), ..Default::default() });
    let app = app(&f);
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "boom"})), &[]).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_tei_error(&v, "panicked");
    let (s, _, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "fine"})), &[]).await;
    assert_eq!(s, StatusCode::OK);
    f.state.pool().close().await;
}

#[tokio::test]
async fn a_client_that_goes_away_releases_its_lease_and_its_queued_work() {
    let _gate = embed_testkit::module_gate(module_path!());
    // Each forward pass takes 300 ms, so requests queue behind the first one.
    let faults = FaultInjection { forward_delay: Some(Duration::from_millis(300)), ..Default::default() };
    let f = fixture_with(|c| c, faults);
    f.state.preload().await.unwrap();
    let app = app(&f);
    let busy = {
        let app = app.clone();
        tokio::spawn(async move { call(&app, "POST", "/embed", Some(json!({"inputs": "first"})), &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Hyper drops the handler future when the client disconnects; dropping it here is the same.
    let gone = tokio::time::timeout(Duration::from_millis(100), call(&app, "POST", "/embed", Some(json!({"inputs": "abandoned"})), &[])).await;
    assert!(gone.is_err(), "the abandoned request was still waiting");
    let status = f.state.pool().status();
    assert_eq!(status.model("tiny").unwrap().leases, 1, "only the busy request holds a lease");
    assert_eq!(busy.await.unwrap().0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.state.pool().status().model("tiny").unwrap().leases, 0);
    // The abandoned input was never embedded: one sequence went through the model.
    let (_, metrics, _) = call(&app, "GET", "/metrics", None, &[]).await;
    let text = metrics.as_str().unwrap();
    assert!(text.contains("embed_forward_sequences_total{model=\"tiny\"} 1"), "{text}");
    f.state.pool().close().await;
}

#[tokio::test]
async fn router_nests_in_a_user_app() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture();
    let user_app: Router = Router::new()
        .route("/hello", axum::routing::get(|| async { "hi" }))
        .nest("/embeddings", router(f.state.clone()));
    let (s, v, _) = call(&user_app, "POST", "/embeddings/embed", Some(json!({"inputs": "x"})), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, _) = call(&user_app, "GET", "/hello", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    f.state.pool().close().await;
}

/// An indexing flood is refused before queries are: with one bulk permit, a second bulk request
/// gets 429 while the first runs, and a query is still served beside it. The priority comes
/// from the body, the `X-Embed-Priority` header, or the request's size; a bad one is a 422.
#[tokio::test]
async fn bulk_requests_have_their_own_limit_and_queries_pass_it() {
    let _gate = embed_testkit::module_gate(module_path!());
    let faults = FaultInjection { forward_delay: Some(Duration::from_millis(300)), ..Default::default() };
    let f = fixture_with(|c| c.with_limits(Limits { max_concurrent: 8, max_concurrent_bulk: Some(1), ..Limits::default() }), faults);
    f.state.preload().await.unwrap();
    let app = app(&f);
    let texts: Vec<String> = (0..40).map(|i| format!("document {i}")).collect();
    let slow = {
        let (app, texts) = (app.clone(), texts.clone());
        tokio::spawn(async move { call(&app, "POST", "/embed", Some(json!({"inputs": texts})), &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // By size (40 inputs: bulk), by body field, by header: each refused while the first runs.
    let (s, v, h) = call(&app, "POST", "/embed", Some(json!({"inputs": texts})), &[]).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(h["retry-after"], "1");
    assert_tei_error(&v, "bulk requests (limit 1)");
    let (s, v, _) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": "one", "priority": "bulk"})), &[]).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_openai_error(&v, "bulk requests");
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "one"})), &[("x-embed-priority", "bulk")]).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    // A query is admitted (and a body field wins over the header).
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "a query"})), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "q", "priority": "interactive"})), &[("x-embed-priority", "bulk")]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": texts, "priority": "interactive"})), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
    // Bad priorities name the problem.
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "x"})), &[("x-embed-priority", "urgent")]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_tei_error(&v, "x-embed-priority");
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "x", "priority": "urgent"})), &[]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_tei_error(&v, "priority");
    // The permit came back: a bulk request is admitted again.
    let (s, v, _) = call(&app, "POST", "/embed", Some(json!({"inputs": "one"})), &[("x-embed-priority", "bulk")]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Three interactive requests ran and two bulk ones; the refused ones never reached the model.
    let (_, metrics, _) = call(&app, "GET", "/metrics", None, &[]).await;
    let text = metrics.as_str().unwrap();
    for line in [
        "embed_requests_started_total{model=\"tiny\",priority=\"interactive\"} 3",
        "embed_requests_started_total{model=\"tiny\",priority=\"bulk\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // The CPU budget is the process's: other tests of this binary may be computing right now,
    // so only the figures' presence and their bound are this test's to check.
    let gauge = |name: &str| -> f64 {
        let value = text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')));
        value.and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let (budget, in_use, peak) = (gauge("embed_cpu_thread_budget"), gauge("embed_cpu_threads_in_use"), gauge("embed_cpu_threads_peak"));
    assert!(budget >= 1.0 && in_use <= budget && (1.0..=budget).contains(&peak), "budget {budget}, in use {in_use}, peak {peak}");
    assert!(text.contains("embed_first_batch_wait_seconds_total{model=\"tiny\",priority=\"bulk\"}"), "{text}");
    assert!(text.contains("embed_compute_seconds_total{model=\"tiny\",priority=\"bulk\"}"), "{text}");
    f.state.pool().close().await;
}

/// The generated OpenAPI document describes every route the router serves (taken from
/// `route_table`, the list the router is built from, so a route added without documentation
/// fails here) and nothing it does not serve; `openapi-spec-validator` (the project's venv)
/// accepts it; `/docs` renders it.
#[tokio::test]
async fn openapi_document_lists_every_route_and_validates() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture_with(|c| c.with_api_key(Some("k".into())), FaultInjection::default());
    let app = app(&f);
    // Open, like /health: no key.
    let (s, doc, headers) = call(&app, "GET", "/openapi.json", None, &[]).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    assert_eq!(doc, serde_json::to_value(embed_server::openapi()).unwrap(), "the served document is the generated one");

    let table = embed_server::route_table();
    assert!(table.len() >= 29, "the route table has {} routes", table.len());
    let paths = doc["paths"].as_object().expect("paths");
    let mut missing = Vec::new();
    for (method, path) in &table {
        match paths.get(*path).and_then(|item| item.get(*method)) {
            Some(op) => {
                assert!(op["responses"]["200"].is_object(), "{method} {path}: no 200 answer documented: {op}");
                if *method == "post" && !path.starts_with("/models/") {
                    assert!(op["requestBody"]["content"]["application/json"]["schema"].is_object(), "{method} {path}: no JSON body: {op}");
                }
            }
            None => missing.push(format!("{method} {path}")),
        }
    }
    assert!(missing.is_empty(), "routes the OpenAPI document lacks: {missing:?}");
    let mut documented = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys().filter(|k| *k != "parameters") {
            documented += 1;
            assert!(table.iter().any(|(m, p)| m == method && p == path), "documented but not served: {method} {path}");
        }
    }
    assert_eq!(documented, table.len());
    // The typed bodies are in it: /embed's fields, TEI's error shape on a TEI route, OpenAI's on an OpenAI route.
    let schemas = &doc["components"]["schemas"];
    let embed = &schemas["EmbedRequest"];
    assert!(embed["properties"]["inputs"].is_object() && embed["properties"]["normalize"].is_object(), "{embed}");
    assert_eq!(embed["required"], json!(["inputs"]), "{embed}");
    assert!(schemas["ErrorResponse"]["properties"]["error_type"].is_object(), "{}", schemas["ErrorResponse"]);
    let schema_of = |path: &str, status: &str| paths[path]["post"]["responses"][status]["content"]["application/json"]["schema"]["$ref"].clone();
    assert_eq!(schema_of("/embed", "422"), "#/components/schemas/ErrorResponse");
    assert_eq!(schema_of("/v1/embeddings", "400"), "#/components/schemas/OpenAiErrorResponse");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let python = embed_testkit::workspace_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing; run `cargo xtask setup`", python.display());
    let out = std::process::Command::new(&python).args(["-m", "openapi_spec_validator"]).arg(file.path()).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openapi-spec-validator refused the document: {said}");
    assert!(said.contains("OK"), "{said}");

    let (s, page, headers) = call(&app, "GET", "/docs", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.as_str().is_some_and(|p| p.contains("openapi.json") && p.contains("SwaggerUIBundle")), "{page}");
}

/// A timing header's value in milliseconds (or a count).
#[track_caller]
fn header_number(h: &axum::http::HeaderMap, name: &str) -> u64 {
    let v = h.get(name).unwrap_or_else(|| panic!("no {name} header: {h:?}"));
    v.to_str().unwrap().parse().unwrap_or_else(|e| panic!("{name}: {v:?} is not a whole number: {e}"))
}

/// text-embeddings-inference's timing headers come from embed-core's measurements: the tokens
/// are the tokens computed, the characters the texts', and with every forward pass delayed
/// 60 ms the inference time covers the pass, and a request queued behind another one waits
/// for it in the queue time; compute time is the three stages together, total time covers it.
#[tokio::test]
async fn tei_timing_headers_are_measured() {
    let _gate = embed_testkit::module_gate(module_path!());
    let delay = Duration::from_millis(60);
    let f = fixture_with(|c| c, FaultInjection { forward_delay: Some(delay), ..Default::default() });
    let app = app(&f);
    let texts: Vec<String> = (0..12).map(|i| format!("text number {i}, with a few words to tokenize — ünïcode {}", "x".repeat(i))).collect();
    let (s, v, h) = call(&app, "POST", "/embed", Some(json!({"inputs": texts})), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, toks, th) = call(&app, "POST", "/tokenize", Some(json!({"inputs": texts})), &[]).await;
    let tokens: u64 = toks.as_array().unwrap().iter().map(|t| t.as_array().unwrap().len() as u64).sum();
    assert!(tokens > 12 * 5, "{toks}");
    assert_eq!(header_number(&h, "x-compute-tokens"), tokens);
    assert_eq!(header_number(&h, "x-compute-characters"), texts.iter().map(|t| t.chars().count() as u64).sum::<u64>());
    let stages = |h: &axum::http::HeaderMap| {
        let (tok, queue, inf) = (header_number(h, "x-tokenization-time"), header_number(h, "x-queue-time"), header_number(h, "x-inference-time"));
        let (compute, total) = (header_number(h, "x-compute-time"), header_number(h, "x-total-time"));
        // Each is rounded down to whole milliseconds on its own.
        assert!((tok + queue + inf..=tok + queue + inf + 2).contains(&compute), "compute {compute} vs {tok} + {queue} + {inf}");
        assert!(total >= compute, "total {total} < compute {compute}");
        (queue, inf)
    };
    let (_, inference) = stages(&h);
    assert!(inference >= delay.as_millis() as u64, "inference {inference} ms under the forward pass's {delay:?}");
    assert!(th.get("x-compute-time").is_none(), "/tokenize computes nothing: {th:?}");

    // OpenAI's route: the tokens are its usage.
    let (s, v, h) = call(&app, "POST", "/v1/embeddings", Some(json!({"input": ["one text", "and another one"]})), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(header_number(&h, "x-compute-tokens"), v["usage"]["total_tokens"].as_u64().unwrap());
    stages(&h);

    // A request queued behind another waits in the queue for the other's pass.
    let first = tokio::spawn(call_owned(app.clone(), json!({"inputs": "the first request"})));
    tokio::time::sleep(Duration::from_millis(15)).await;
    let (s, v, h) = call(&app, "POST", "/embed", Some(json!({"inputs": "the second request"})), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (queue, inference) = stages(&h);
    assert!(queue >= 20, "the second request's queue time {queue} ms: it waited for the first's 60 ms pass");
    assert!(inference >= delay.as_millis() as u64, "{inference}");
    let (s, _, h1) = first.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(header_number(&h1, "x-queue-time") < queue, "the first request did not wait behind the second");

    // Errors carry none.
    let (s, _, h) = call(&app, "POST", "/embed", Some(json!({"inputs": []})), &[]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(h.get("x-compute-time").is_none(), "{h:?}");
}

async fn call_owned(app: Router, body: Value) -> (StatusCode, Value, axum::http::HeaderMap) {
    call(&app, "POST", "/embed", Some(body), &[]).await
}
