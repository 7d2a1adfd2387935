//! Real-socket tests against the `embed-server` binary and against `serve` in-process:
//! readiness, requests over HTTP, graceful shutdown with requests in flight.

use crate::common;

use std::time::Duration;

use common::Server;

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::{minilm_dir, TinyModel};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_matches_the_library() {
    let _gate = embed_testkit::module_gate(module_path!());
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

/// The binary started as TEI is (its flags, then its environment variables alone, with a
/// pod's HOSTNAME about) serves `/embed` under the key, applies TEI's client batch limit, lets
/// any `model` name reach its one model, and prints neither the key nor the hub token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tei_style_start() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, dir) = TinyModel::default().write_temp();
    let dir = dir.to_str().unwrap().to_string();
    let (key, token) = ("KEY_SECRET_0f3a", "hf_SECRET_9b1c");
    let client = reqwest::Client::new();
    let command = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_embed-server"));
        cmd.env("EMBED_LOG", "debug")
            .env_remove("LD_LIBRARY_PATH")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let mut by_flags = command();
    by_flags.args(["--model-id", &dir, "--hostname", "127.0.0.1", "--port", "0", "--max-client-batch-size", "2", "--auto-truncate"]);
    by_flags.args(["--hf-token", token, "--api-key", key]);
    let mut by_env = command();
    by_env
        .envs([("MODEL_ID", dir.as_str()), ("PORT", "0"), ("HOSTNAME", "embed-5f7d9-abcde"), ("MAX_CLIENT_BATCH_SIZE", "2")])
        .envs([("AUTO_TRUNCATE", "true"), ("API_KEY", key), ("HF_TOKEN", token)]);
    for (how, cmd) in [("flags", by_flags), ("environment", by_env)] {
        let server = Server::spawn(cmd);
        let base = server.base.replace("0.0.0.0", "127.0.0.1");
        if how == "environment" {
            assert!(server.base.contains("0.0.0.0:"), "{how}: a pod's HOSTNAME is not an address: {}", server.base);
        }
        let ready = std::time::Instant::now();
        while client.get(format!("{base}/ready")).send().await.map(|r| r.status()).ok() != Some(reqwest::StatusCode::OK) {
            assert!(ready.elapsed() < Duration::from_secs(60), "{how}: never ready:\n{}", server.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let embed = |body: Value| client.post(format!("{base}/embed")).bearer_auth(key).json(&body).send();
        let r = embed(json!({"inputs": ["hello", "world"]})).await.unwrap();
        assert_eq!(r.status(), 200, "{how}");
        assert_eq!(r.json::<Vec<Vec<f32>>>().await.unwrap().len(), 2);
        assert_eq!(embed(json!({"inputs": ["a", "b", "c"]})).await.unwrap().status(), 413, "{how}: --max-client-batch-size 2");
        let r = client.post(format!("{base}/embed")).json(&json!({"inputs": "x"})).send().await.unwrap();
        assert_eq!(r.status(), 401, "{how}: the key is required");
        let r = client
            .post(format!("{base}/v1/embeddings"))
            .bearer_auth(key)
            .json(&json!({"input": "x", "model": "text-embedding-3-small"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{how}: any model name reaches the one model");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["model"], json!(dir), "{how}: answered as the served model");
        hf_inference_client_agrees(&client, &base, key, how).await;
        server.signal(libc::SIGTERM);
        let out = server.stdout();
        let (code, log) = server.wait(Duration::from_secs(30));
        assert_eq!(code, 0, "{how}: {log}");
        for secret in [key, token] {
            assert!(!log.contains(secret) && !out.contains(secret), "{how}: {secret} printed:\n{out}\n{log}");
        }
    }
}

/// huggingface_hub's `InferenceClient(base_url, api_key)` (the project's venv) calls
/// `feature_extraction` and `sentence_similarity` against the server at `base`, and gets the
/// vectors `/embed` gives and the cosines `/similarity` gives.
async fn hf_inference_client_agrees(client: &reqwest::Client, base: &str, key: &str, how: &str) {
    let root = embed_testkit::workspace_root();
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing; run `cargo xtask setup`", python.display());
    let out = std::process::Command::new(python).arg(root.join("python/hf_inference_client_check.py")).args([base, key]).output().unwrap();
    assert!(out.status.success(), "{how}: the huggingface_hub client failed: {}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{how}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).bearer_auth(key).json(&body).send();
    let served: Vec<Vec<f32>> = post("/embed", json!({"inputs": got["texts"]})).await.unwrap().json().await.unwrap();
    let vectors = |v: &Value| -> Vec<Vec<f32>> { serde_json::from_value(v.clone()).unwrap() };
    assert_eq!(served.len(), 2);
    embed_testkit::assert_max_abs_diff(&format!("{how}: feature_extraction of a list"), &vectors(&got["many"]), &served, 1e-6);
    embed_testkit::assert_max_abs_diff(&format!("{how}: feature_extraction of one text"), &vectors(&got["one"]), &served[..1], 1e-6);
    let body = json!({"inputs": {"source_sentence": got["source"], "sentences": got["sentences"]}});
    let expected: Vec<f32> = post("/similarity", body).await.unwrap().json().await.unwrap();
    let similarity: Vec<f32> = serde_json::from_value(got["similarity"].clone()).unwrap();
    assert_eq!(similarity.len(), 1, "{how}: {got}");
    embed_testkit::assert_max_abs_diff(&format!("{how}: sentence_similarity"), &[similarity], &[expected], 1e-6);
}

/// TEI's `--json-output`: every log line is one JSON object with the level, the time, the
/// message and the event's fields at the top level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_logs() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, dir) = TinyModel::default().write_temp();
    let model = format!("tiny={}", dir.display());
    let server = Server::start(&["--model", &model, "--json-output"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let r = client.post(format!("{}/embed", server.base)).json(&json!({"inputs": "hello"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let addr = server.base.trim_start_matches("http://").to_string();
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{log}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()), "{log}");
    let listening = lines.iter().find(|l| l["message"] == "listening").unwrap_or_else(|| panic!("no listening event: {log}"));
    assert_eq!(listening["addr"], json!(addr), "fields flattened beside the message");
    assert!(lines.iter().any(|l| l["message"] == "stopped" && l["live_models"] == json!(0)), "{log}");
}

/// TEI's `--prometheus-port`: `/metrics` on a listener of its own (and still on the main port),
/// and nothing else there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_port_serves_metrics() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, dir) = TinyModel::default().write_temp();
    let model = format!("tiny={}", dir.display());
    let server = Server::start(&["--model", &model, "--prometheus-port", "0"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let out = server.stdout();
    let metrics = out
        .lines()
        .find_map(|l| l.strip_prefix("metrics on "))
        .unwrap_or_else(|| panic!("no metrics address printed: {out}"))
        .trim()
        .to_string();
    assert_ne!(metrics, format!("{}/metrics", server.base), "a port of its own");
    let r = client.post(format!("{}/embed", server.base)).json(&json!({"inputs": "hello"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(&metrics).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("embed_http_requests_total") && text.contains("route=\"/embed\""), "{text}");
    let main = client.get(format!("{}/metrics", server.base)).send().await.unwrap();
    assert_eq!(main.status(), 200, "the main port keeps /metrics");
    let other = client.post(metrics.replace("/metrics", "/embed")).json(&json!({"inputs": "x"})).send().await.unwrap();
    assert_eq!(other.status(), 404, "only /metrics on the metrics port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let _gate = embed_testkit::module_gate(module_path!());
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
    let _gate = embed_testkit::module_gate(module_path!());
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

