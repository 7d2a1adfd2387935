//! The gRPC API (TEI's tei.v1) of the `embed-server` binary, driven by a Python client generated
//! from `proto/tei.proto` at test time (`python/grpc_client_check.py`, grpcio-tools in the
//! project's venv): every unary and streaming method agrees with the HTTP routes, errors carry
//! TEI's codes, and the gRPC listener shuts down with the HTTP one.

use crate::common;

use std::time::Duration;

use common::Server;
use embed_testkit::{fixture_dir, workspace_root};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_api_agrees_with_http() {
    let _gate = embed_testkit::module_gate(module_path!());
    let root = workspace_root();
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing; run `cargo xtask setup`", python.display());
    let model = |name: &str, fixture: &str| format!("{name}={}", fixture_dir(fixture).display());
    let models = [model("bert", "bert"), model("splade", "bert-splade"), model("classifier", "bert-classifier"), model("reranker", "bert-reranker")];
    let key = "grpc-test-key";
    let mut args = vec!["--default-model", "bert", "--max-models", "4", "--grpc-port", "0", "--api-key", key];
    args.extend(["--max-concurrent", "1", "--max-inputs", "4", "--max-body-bytes", "65536"]);
    for m in &models {
        args.extend(["--model", m.as_str()]);
    }
    let server = Server::start(&args);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let out = server.stdout();
    let grpc = out
        .lines()
        .find_map(|l| l.strip_prefix("gRPC (tei.v1) on "))
        .unwrap_or_else(|| panic!("the server printed no gRPC address:\n{out}"))
        .trim()
        .to_string();
    let (base, proto) = (server.base.clone(), root.join("crates/embed-server/proto"));
    let check = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(root.join("python/grpc_client_check.py")).args([&grpc, &base, key]).arg(proto).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "the gRPC client failed:\n{stdout}\n{}\nserver log:\n{}", String::from_utf8_lossy(&check.stderr), server.log());
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let called: Vec<&str> = summary["called"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let every = [
        "Decode", "DecodeStream", "Embed", "EmbedAll", "EmbedAllStream", "EmbedSparse", "EmbedSparseStream", "EmbedStream", "Info", "Predict",
        "PredictPair", "PredictPairStream", "PredictStream", "Rerank", "RerankStream", "Tokenize", "TokenizeStream",
    ];
    assert_eq!(called, every, "every method of tei.v1 is called");
    assert!(summary["checks"].as_u64().unwrap() > 100, "{summary}");
    assert_eq!(summary["codes"]["wrong key"], "UNAUTHENTICATED", "{summary}");
    assert_eq!(summary["codes"]["over the concurrency limit"], "RESOURCE_EXHAUSTED", "{summary}");
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("gRPC server stopped") && log.contains("live_models=0"), "{log}");
    assert!(!log.contains(key), "the key is never logged:\n{log}");
}
