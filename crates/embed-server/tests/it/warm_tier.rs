//! The warm tier through the `embed-server` binary: with one slot and `--warm-tier always`
//! (CPU models too, so it runs without a GPU), a second model sends the first to host memory,
//! `/models` and `/metrics` show it there, `/models/events` says why, and the next request
//! restores it with the same vectors. Without the flag, on a machine without CUDA, `/models`
//! says the tier is off and why.

use crate::common;

use std::time::Duration;

use common::Server;
use embed_testkit::TinyModel;
use serde_json::{json, Value};

async fn embed(client: &reqwest::Client, base: &str, model: &str) -> Vec<Vec<f32>> {
    let r = client.post(format!("{base}/v1/embeddings")).json(&json!({"input": ["warm tier", "a second text"], "model": model})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["data"].as_array().unwrap().iter().map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect()
}

async fn get(client: &reqwest::Client, base: &str, path: &str) -> reqwest::Response {
    client.get(format!("{base}{path}")).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_model_waits_warm_and_comes_back_with_the_same_vectors() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_ta, a) = TinyModel::default().write_temp();
    let (_tb, b) = TinyModel { seed: 9, ..Default::default() }.write_temp();
    let (ma, mb) = (format!("a={}", a.display()), format!("b={}", b.display()));
    let server = Server::start(&["--model", &ma, "--model", &mb, "--max-models", "1", "--warm-tier", "always", "--host-budget", "64M"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let base = server.base.clone();

    let first = embed(&client, &base, "a").await;
    embed(&client, &base, "b").await; // one slot: a goes warm
    let v: Value = get(&client, &base, "/models").await.json().await.unwrap();
    let a_status = v["loaded"].as_array().unwrap().iter().find(|m| m["name"] == "a").cloned().unwrap_or_default();
    assert_eq!(a_status["state"], "warm", "{v}");
    assert_eq!(a_status["device_bytes"], 0, "{v}");
    assert!(a_status["host_bytes"].as_u64().unwrap() >= a_status["weight_bytes"].as_u64().unwrap(), "{v}");
    assert_eq!(v["warm_tier"]["enabled"], true, "{v}");
    assert_eq!(v["warm_tier"]["host_budget"], 64 << 20, "{v}");

    let again = embed(&client, &base, "a").await; // restores a, b goes warm
    assert_eq!(first, again, "vectors after a restore are bitwise the same");
    let v: Value = get(&client, &base, "/models/events").await.json().await.unwrap();
    let a_events: Vec<(String, Value)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["model"] == "a")
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["cause"].clone()))
        .collect();
    assert_eq!(a_events, [("loaded".into(), Value::Null), ("offloaded".into(), json!("capacity")), ("restored".into(), Value::Null)], "{v}");

    // Explicit offload: the idle a goes warm now; again is a no-op; an unknown model is a 404.
    let post = |path: String| client.post(format!("{base}{path}")).send();
    let r = post("/models/a/offload".into()).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["offloaded"].as_bool(), v["host_bytes"].as_u64().unwrap() > 0), (Some(true), true), "{v}");
    let v: Value = post("/models/a/offload".into()).await.unwrap().json().await.unwrap();
    assert_eq!(v["offloaded"], false, "{v}");
    assert_eq!(post("/models/nope/offload".into()).await.unwrap().status(), 404);
    assert_eq!(post("/models/a/load".into()).await.unwrap().status(), 200, "load restores a warm model");

    let text = get(&client, &base, "/metrics").await.text().await.unwrap();
    for needle in ["embed_pool_offloads_total 3", "embed_pool_restores_total 2", "embed_pool_warm_models 1", "embed_pool_host_budget_bytes 67108864"] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("live_models=0"), "a warm model is released at shutdown too: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_says_whether_the_warm_tier_is_on_and_why() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_t, dir) = TinyModel::default().write_temp();
    let model = format!("tiny={}", dir.display());
    let server = Server::start(&["--model", &model]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let v: Value = get(&client, &server.base, "/models").await.json().await.unwrap();
    let cuda = embed_core::memory::accelerator_available();
    assert_eq!(v["warm_tier"]["enabled"], cuda, "{v}");
    if !cuda {
        assert!(v["warm_tier"]["note"].as_str().unwrap().contains("no CUDA device"), "{v}");
        assert_eq!(v["warm_tier"]["host_budget"], 0, "{v}");
    }
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
}
