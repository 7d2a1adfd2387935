//! `/metrics` parsed by the official Prometheus Python parser (`prometheus_client`, installed in
//! the project's venv by `cargo xtask setup`) across model reloads, with a model name that
//! needs escaping: counters never go down, unloaded models have no series, the queue gauge is
//! live.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use common::inproc::{fixture, send};
use embed_core::{FaultInjection, ModelOptions, ModelSpec};
use embed_testkit::{workspace_root, TinyModel};
use serde_json::{json, Value};

const WEIRD: &str = r#"we"ird\name"#;

/// (sample name, labels, value) as the Python parser read them; panics if it cannot parse.
fn parse(text: &str) -> Vec<(String, serde_json::Map<String, Value>, f64)> {
    let python = workspace_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing; run `cargo xtask setup`", python.display());
    let mut child = Command::new(python)
        .arg(workspace_root().join("python/prometheus_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "prometheus_client could not parse /metrics:\n{}\n{text}", String::from_utf8_lossy(&out.stderr));
    let v: Vec<(String, serde_json::Map<String, Value>, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

fn value(samples: &[(String, serde_json::Map<String, Value>, f64)], name: &str, model: &str) -> Option<f64> {
    samples.iter().find(|(n, l, _)| n == name && l.get("model").and_then(Value::as_str) == Some(model)).map(|s| s.2)
}

async fn scrape(app: &axum::Router) -> Vec<(String, serde_json::Map<String, Value>, f64)> {
    let (s, body, h) = send(app, "GET", "/metrics", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = body.as_str().unwrap().to_string();
    tokio::task::spawn_blocking(move || parse(&text)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_parse_and_counters_survive_reloads() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (tmp, dir) = TinyModel::default().write_temp();
    let slow = ModelOptions::default().with_faults(FaultInjection { forward_delay: Some(Duration::from_millis(1500)), ..Default::default() });
    // max_models 1: loading `other` evicts the weird one, and the next request reloads it.
    let f = fixture(1, |c| c, FaultInjection::default(), |r| {
        r.with(WEIRD, ModelSpec::new(dir.to_string_lossy()).named(WEIRD)).with("slow", ModelSpec::new(dir.to_string_lossy()).named("slow").with_options(slow))
    });
    let embed = |model: &'static str, inputs: Value| {
        let app = f.app.clone();
        async move {
            let (s, v, _) = send(&app, "POST", "/embed", Some(&json!({"inputs": inputs, "model": model}).to_string()), &[]).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    };
    let mut last = 0.0;
    for round in 0..3 {
        embed(WEIRD, json!(["a", "b"])).await;
        embed(WEIRD, json!("c")).await;
        let samples = scrape(&f.app).await;
        let seqs = value(&samples, "embed_forward_sequences_total", WEIRD).expect("the escaped label reads back exactly");
        assert!(seqs >= last + 3.0, "round {round}: sequences {seqs} after {last}: counters never go down across reloads");
        last = seqs;
        assert!(value(&samples, "embed_forward_batches_total", WEIRD).unwrap() >= 2.0 * (round + 1) as f64);
        // Reload: `other` evicts it.
        let (s, _, _) = send(&f.app, "POST", "/models/other/load", None, &[]).await;
        assert_eq!(s, StatusCode::OK);
        let samples = scrape(&f.app).await;
        assert!(value(&samples, "embed_forward_sequences_total", WEIRD).is_none(), "no series for an unloaded model");
        assert!(value(&samples, "embed_model_weight_bytes", WEIRD).is_none());
        assert!(value(&samples, "embed_model_weight_bytes", "other").is_some());
    }

    // The queue gauge is live: five slow requests in flight show as five.
    let tasks: Vec<_> = (0..5).map(|i| tokio::spawn(embed("slow", json!(format!("slow {i}"))))).collect();
    let mut seen = 0.0;
    for _ in 0..500 {
        // Raw text while polling (the parser is slow to start); parsed once it shows all five.
        let (_, body, _) = send(&f.app, "GET", "/metrics", None, &[]).await;
        let text = body.as_str().unwrap().to_string();
        if text.contains(r#"embed_queue_depth{model="slow"} 5"#) {
            seen = tokio::task::spawn_blocking(move || value(&parse(&text), "embed_queue_depth", "slow")).await.unwrap().unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 5.0, "embed_queue_depth while five requests were in flight");
    for t in tasks {
        t.await.unwrap();
    }
    let samples = scrape(&f.app).await;
    assert_eq!(value(&samples, "embed_queue_depth", "slow"), Some(0.0));
    f.state.pool().close().await;
    drop(tmp);
}
