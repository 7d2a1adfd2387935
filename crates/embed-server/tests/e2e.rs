//! Real-socket tests against the `embed-server` binary and against `serve` in-process:
//! readiness, requests over HTTP, graceful shutdown with requests in flight.

mod common;

use std::time::Duration;

use common::Server;

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::{minilm_dir, TinyModel};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_matches_the_library() {
    let (_tmp, dir) = TinyModel::default().write_temp();
    let model = format!("tiny={}", dir.display());
    let server = Server::start(&["--model", &model]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let texts = vec!["hello world".to_string(), "the cat and the dog".to_string()];
    let r = client.post(format!("{}/embed", server.base)).json(&json!({"inputs": texts})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let served: Vec<Vec<f32>> = r.json().await.unwrap();
    let lib = DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy())).await.unwrap();
    let expected = lib.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
    lib.cleanup().await.unwrap();
    embed_testkit::assert_max_abs_diff("served vs library", &served, &expected.vectors, 1e-6);
    let r = client.post(format!("{}/v1/embeddings", server.base)).json(&json!({"input": "x", "model": "nope"})).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("pool closed") && log.contains("live_models=0"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let model = format!("minilm={}", minilm_dir().display());
    // The requests' own timeout is not under test: on a busy machine six of them can take longer
    // than the default 60 s.
    let server = Server::start(&["--model", &model, "--shutdown-deadline", "120", "--request-timeout", "600"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    // Requests that each take a while: 256 long inputs.
    let texts: Vec<String> = (0..256).map(|i| format!("request text number {i} ").repeat(12)).collect();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (client, base, texts) = (client.clone(), server.base.clone(), texts.clone());
            tokio::spawn(async move { client.post(format!("{base}/embed")).json(&json!({"inputs": texts})).send().await })
        })
        .collect();
    // Let every request reach the server (they take seconds each), then ask it to stop.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.signal(libc::SIGTERM);
    for t in tasks {
        let r = t.await.unwrap().expect("in-flight request completed, not dropped");
        assert_eq!(r.status(), 200);
        let v: Vec<Vec<f32>> = r.json().await.unwrap();
        assert_eq!(v.len(), 256);
    }
    let (code, log) = server.wait(Duration::from_secs(150));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("drained=true"), "{log}");
    assert!(log.contains("live_models=0"), "every model released before exit:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_forces_exit() {
    let model = format!("minilm={}", minilm_dir().display());
    let server = Server::start(&["--model", &model, "--shutdown-deadline", "60"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let texts: Vec<String> = (0..512).map(|i| format!("long request {i} ").repeat(20)).collect();
    let base = server.base.clone();
    let c2 = client.clone();
    let busy = tokio::spawn(async move { c2.post(format!("{base}/embed")).json(&json!({"inputs": texts})).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal(libc::SIGINT);
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.signal(libc::SIGINT);
    let (code, log) = server.wait(Duration::from_secs(10));
    assert_eq!(code, 130, "{log}");
    let _ = busy.await;
}

