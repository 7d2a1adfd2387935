//! The official `openai` Python client (installed in the project's venv by `cargo xtask setup`)
//! works unchanged against the server and gets the library's vectors.

use crate::common;

use std::process::Command;

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::{cosine, minilm_dir, workspace_root};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_client_gets_library_vectors() {
    let _gate = embed_testkit::module_gate(module_path!());
    let python = workspace_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing; run `cargo xtask setup`", python.display());
    let model = format!("minilm={}", minilm_dir().display());
    let server = common::Server::start(&["--model", &model, "--api-key", "test-key"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;

    let texts = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors.", "naïve café"];
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(workspace_root().join("python/openai_client_check.py"))
            .args([base.as_str(), "test-key", "minilm"])
            .args(texts)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "client failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();

    let lib = DenseEmbeddingService::from_spec(ModelSpec::new(minilm_dir().to_string_lossy())).await.unwrap();
    let owned: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
    let expected = lib.embed_texts(&owned, &EmbedOptions::default()).await.unwrap();
    lib.cleanup().await.unwrap();

    for key in ["default", "float"] {
        let got: Vec<Vec<f32>> = serde_json::from_value(v[key].clone()).unwrap();
        assert_eq!(got.len(), texts.len());
        for (g, e) in got.iter().zip(&expected.vectors) {
            assert!(embed_testkit::max_abs_diff(g, e) < 1e-6, "{key}: vectors differ");
            assert!(cosine(g, e) > 0.999999);
        }
    }
    let single: Vec<f32> = serde_json::from_value(v["single"].clone()).unwrap();
    assert!(embed_testkit::max_abs_diff(&single, &expected.vectors[0]) < 1e-6);
    assert_eq!(v["indices"], serde_json::json!([0, 1, 2]));
    assert_eq!(v["model"], "minilm");
    assert_eq!(v["prompt_tokens"].as_u64().unwrap() as usize, expected.total_tokens());
    assert!(v["models"].as_array().unwrap().iter().any(|m| m == "minilm"));
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(std::time::Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
}
