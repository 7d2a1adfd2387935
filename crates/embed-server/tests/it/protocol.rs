//! In-process checks of issue 12's defects 3, 5, 6 and 7: exact API-key comparison, permanent
//! load errors, read-only routes that never touch the pool, and protocol details.

use crate::common;

use std::time::Duration;

use axum::http::StatusCode;
use common::inproc::{fixture, send, Fixture};
use embed_core::{DType, FaultInjection, ModelOptions, ModelSpec};
use serde_json::Value;

fn plain() -> Fixture {
    fixture(2, |c| c, FaultInjection::default(), |r| r)
}

#[tokio::test]
async fn api_key_is_compared_exactly() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture(2, |c| c.with_api_key(Some("s3cret".into())), FaultInjection::default(), |r| r);
    let body = Some(r#"{"inputs": "x"}"#);
    // The key followed by exactly 65 536 more bytes (a length difference of 2^16).
    let padded = format!("Bearer s3cret{}", "A".repeat(65_536));
    let (s, v, h) = send(&f.app, "POST", "/embed", body, &[("authorization", &padded)]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(h["www-authenticate"], "Bearer");
    for wrong in ["Bearer s3cre", "Bearer s3cret0", "Basic s3cret", "s3cret", "Bearer"] {
        let (s, _, _) = send(&f.app, "POST", "/embed", body, &[("authorization", wrong)]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{wrong:?}");
    }
    let (s, v, h) = send(&f.app, "POST", "/v1/embeddings", Some(r#"{"input": "x"}"#), &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(h["www-authenticate"], "Bearer");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (s, v, _) = send(&f.app, "POST", "/embed", body, &[("authorization", &format!("{scheme} s3cret"))]).await;
        assert_eq!(s, StatusCode::OK, "{scheme}: {v}");
    }
    f.state.pool().close().await;
}

#[tokio::test]
async fn permanent_load_errors_are_not_retryable_and_hide_paths() {
    let _gate = embed_testkit::module_gate(module_path!());
    let gone = std::env::temp_dir().join(format!("embed-missing-{}", std::process::id()));
    let (t, no_weights) = embed_testkit::TinyModel::default().write_temp();
    std::fs::remove_file(no_weights.join("model.safetensors")).unwrap();
    let (t2, tiny) = embed_testkit::TinyModel::default().write_temp();
    let f16 = ModelOptions::default().with_dtype(DType::F16);
    let f = fixture(2, |c| c, FaultInjection::default(), |r| {
        r.with("gone", ModelSpec::new(gone.to_string_lossy()).named("gone"))
            .with("noweights", ModelSpec::new(no_weights.to_string_lossy()).named("noweights"))
            .with("half", ModelSpec::new(tiny.to_string_lossy()).named("half").with_options(f16))
    });
    for (model, path) in [("gone", gone.clone()), ("noweights", no_weights.clone()), ("half", tiny.clone())] {
        let (s, v, h) = send(&f.app, "POST", "/embed", Some(&format!(r#"{{"inputs": "x", "model": "{model}"}}"#)), &[]).await;
        assert_eq!(s, StatusCode::FAILED_DEPENDENCY, "{model}: {v}");
        assert!(h.get("retry-after").is_none(), "{model}: retrying cannot help");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(model), "{msg}");
        let dir = path.to_string_lossy();
        assert!(!msg.contains(dir.as_ref()) && !msg.contains("/tmp"), "{model}: host path in {msg:?}");
        let (s, v, _) = send(&f.app, "POST", "/v1/embeddings", Some(&format!(r#"{{"input": "x", "model": "{model}"}}"#)), &[]).await;
        assert_eq!(s, StatusCode::FAILED_DEPENDENCY, "{v}");
        assert_eq!(v["error"]["code"], "model_load_failed");
    }
    let (_, v, _) = send(&f.app, "POST", "/embed", Some(r#"{"inputs": "x", "model": "noweights"}"#), &[]).await;
    assert!(v["error"].as_str().unwrap().contains("model.safetensors"), "names the file, not its path: {v}");
    let (_, v, _) = send(&f.app, "POST", "/embed", Some(r#"{"inputs": "x", "model": "half"}"#), &[]).await;
    assert!(v["error"].as_str().unwrap().contains("f16"), "{v}");
    f.state.pool().close().await;
    drop((t, t2));
}

#[tokio::test]
async fn read_only_routes_never_load_or_evict() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = fixture(1, |c| c, FaultInjection::default(), |r| r);
    let (s, _, _) = send(&f.app, "GET", "/info", None, &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "/info does not load the default model");
    assert_eq!(f.state.pool().stats().loads, 0);
    // Load the default model (its info is remembered), then `other` evicts it (max_models 1).
    f.state.preload().await.unwrap();
    let (s, _, _) = send(&f.app, "POST", "/models/other/load", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let before = (f.state.pool().stats(), f.state.pool().status().models.iter().map(|m| m.name.clone()).collect::<Vec<_>>());
    assert_eq!(before.1, ["other"]);
    for path in ["/info", "/v1/models", "/models", "/metrics", "/health", "/ready"] {
        let (s, v, _) = send(&f.app, "GET", path, None, &[]).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    let (_, v, _) = send(&f.app, "GET", "/info", None, &[]).await;
    assert_eq!((v["model_id"].as_str(), v["dimension"].as_u64()), (Some("tiny"), Some(32)));
    let after = (f.state.pool().stats(), f.state.pool().status().models.iter().map(|m| m.name.clone()).collect::<Vec<_>>());
    assert_eq!(after.1, ["other"], "still loaded, nothing else");
    assert_eq!((after.0.loads, after.0.evictions.total()), (before.0.loads, before.0.evictions.total()));
    f.state.pool().close().await;
}

fn assert_openai_400(v: &Value, param: &str, needles: &[&str]) {
    let e = &v["error"];
    assert_eq!(e["type"], "invalid_request_error", "{v}");
    assert_eq!(e["param"], param, "{v}");
    assert!(e["code"].is_null() || e["code"].as_str().is_some_and(|c| c.parse::<u16>().is_err()), "code is not the HTTP status: {v}");
    let msg = e["message"].as_str().unwrap();
    assert!(!msg.contains("did not match any variant"), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "{msg:?} should mention {n:?}");
    }
}

#[tokio::test]
async fn openai_validation_follows_openai() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = plain();
    let call = |body: &'static str| {
        let app = f.app.clone();
        async move { send(&app, "POST", "/v1/embeddings", Some(body), &[]).await }
    };
    let (s, v, _) = call(r#"{"input": "x", "encoding_format": null}"#).await;
    assert_eq!(s, StatusCode::OK, "null means the default: {v}");
    assert!(v["data"][0]["embedding"].is_array());
    for body in [r#"{"input": ""}"#, r#"{"input": ["a", ""]}"#, r#"{"input": []}"#, r#"{"input": [[]]}"#] {
        let (s, v, _) = call(body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_openai_400(&v, "input", &["input"]);
    }
    let (s, v, _) = call(r#"{"input": null}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_openai_400(&v, "input", &["`input`", "null", "a string, an array of strings"]);
    let (s, v, _) = call(r#"{"input": [1, "a"]}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_openai_400(&v, "input", &["item 1", "token id"]);
    let (s, v, _) = call(r#"{"input": "x", "encoding_format": "hex"}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_openai_400(&v, "encoding_format", &["hex", "float", "base64"]);
    let (s, v, _) = call(r#"{"input": "x", "dimensions": "many"}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_openai_400(&v, "dimensions", &["`dimensions`"]);
    for (body, named) in [(r#"{"input": "x", "dimensions": 0}"#, "dimensions=0"), (r#"{"input": "x", "dimensions": 33}"#, "dimensions=33")] {
        let (s, v, _) = call(body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_openai_400(&v, "dimensions", &[named, "1 to 32"]);
    }
    let (s, v, _) = call(r#"{"input": "x", "dimensions": -4}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_openai_400(&v, "dimensions", &["`dimensions`"]);
    let (s, v, _) = call(r#"{"input": "x", "model": "nope"}"#).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "model_not_found");
    // TEI keeps 422 for a wrong type, and also names the field now.
    let (s, v, _) = send(&f.app, "POST", "/embed", Some(r#"{"inputs": null}"#), &[]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("`inputs`") && msg.contains("a string or an array of strings"), "{msg}");
    f.state.pool().close().await;
}

#[tokio::test]
async fn method_query_charset_and_conflict_errors_have_the_route_shape() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = plain();
    let (s, v, h) = send(&f.app, "GET", "/embed", None, &[]).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(v["error"].as_str().is_some_and(|m| m.contains("GET")), "TEI shape: {v}");
    assert!(h.contains_key("allow"));
    let (s, v, _) = send(&f.app, "GET", "/v1/embeddings", None, &[]).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(v["error"]["message"].is_string(), "OpenAI shape: {v}");
    let (s, v, _) = send(&f.app, "POST", "/models/tiny/unload?force_fail_if_leased=maybe", None, &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().is_some_and(|m| m.contains("force_fail_if_leased")), "{v}");
    let (s, v, _) = send(&f.app, "POST", "/models/tiny/unload?bogus=1", None, &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    for ct in ["application/json; charset=utf-16", "application/json;charset=UTF-16LE"] {
        let (s, v, _) = send(&f.app, "POST", "/embed", Some(r#"{"inputs": "x"}"#), &[("content-type", ct)]).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}: {v}");
    }
    let (s, _, _) = send(&f.app, "POST", "/embed", Some(r#"{"inputs": "x"}"#), &[("content-type", "application/json; charset=UTF-8")]).await;
    assert_eq!(s, StatusCode::OK);
    // 409: unload without waiting while a lease is held.
    let lease = f.state.pool().get("tiny").await.unwrap();
    let (s, v, _) = send(&f.app, "POST", "/models/tiny/unload?force_fail_if_leased=true", None, &[]).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["error_type"], "Conflict", "{v}");
    drop(lease);
    f.state.pool().close().await;
}

#[tokio::test]
async fn cancelled_requests_are_counted() {
    let _gate = embed_testkit::module_gate(module_path!());
    let faults = FaultInjection { forward_delay: Some(Duration::from_millis(500)), ..Default::default() };
    let f = fixture(2, |c| c, faults, |r| r);
    f.state.preload().await.unwrap();
    let gone = tokio::time::timeout(Duration::from_millis(100), send(&f.app, "POST", "/embed", Some(r#"{"inputs": "x"}"#), &[])).await;
    assert!(gone.is_err(), "the request was still running when the client went away");
    let (_, m, _) = send(&f.app, "GET", "/metrics", None, &[]).await;
    let m = m.as_str().unwrap();
    assert!(m.contains(r#"embed_http_requests_total{route="/embed",status="499"} 1"#), "{m}");
    f.state.pool().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dimensions_keep_the_normalised_prefix_on_both_apis() {
    let _gate = embed_testkit::module_gate(module_path!());
    let f = plain();
    let (s, full, _) = send(&f.app, "POST", "/embed", Some(r#"{"inputs": ["matryoshka doll", "x"]}"#), &[]).await;
    assert_eq!(s, StatusCode::OK, "{full}");
    let prefix = |v: &Value, n: usize| -> Vec<f64> {
        let head: Vec<f64> = v.as_array().unwrap()[..n].iter().map(|x| x.as_f64().unwrap()).collect();
        let norm = head.iter().map(|x| x * x).sum::<f64>().sqrt();
        head.iter().map(|x| x / norm).collect()
    };
    let close = |got: &Value, want: &[f64]| {
        let got: Vec<f64> = got.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len());
        assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{got:?} vs {want:?}");
    };
    let (s, tei, _) = send(&f.app, "POST", "/embed", Some(r#"{"inputs": ["matryoshka doll", "x"], "dimensions": 8}"#), &[]).await;
    assert_eq!(s, StatusCode::OK, "{tei}");
    let (s, oai, _) = send(&f.app, "POST", "/v1/embeddings", Some(r#"{"input": ["matryoshka doll", "x"], "dimensions": 8}"#), &[]).await;
    assert_eq!(s, StatusCode::OK, "{oai}");
    for i in 0..2 {
        let want = prefix(&full[i], 8);
        close(&tei[i], &want);
        close(&oai["data"][i]["embedding"], &want);
    }
    // All of them is the full vector; TEI answers a bad count with 422 and names the field.
    let (_, same, _) = send(&f.app, "POST", "/embed", Some(r#"{"inputs": ["matryoshka doll", "x"], "dimensions": 32}"#), &[]).await;
    assert_eq!(same, full);
    let (s, v, _) = send(&f.app, "POST", "/embed", Some(r#"{"inputs": "x", "dimensions": 0}"#), &[]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("dimensions") || v.to_string().contains("dimensions"), "{v}");
}
