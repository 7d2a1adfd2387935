//! Bulk requests' host-side work (tokenizing, building and encoding the answer) runs on the
//! lower-priority bulk host pool (`embed_core::run_bulk`), an interactive request's does not, and
//! the answers are the same either way. One test: it reads the pool's process-wide task count.

use embed_core::{bulk_host_stats, BULK_NICE};
use serde_json::{json, Value};

use crate::common::Served;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_answers_are_tokenized_and_encoded_on_the_bulk_host_pool() {
    let _gate = embed_testkit::module_gate(module_path!());
    let served = Served::tiny(|c| c).await;
    let (base, client) = (served.base.clone(), reqwest::Client::new());
    // 40 texts: bulk by default (more than 8), and tokenized off the executor (more than 16).
    let texts: Vec<String> = (0..40).map(|i| format!("document number {i} about cats and dogs")).collect();
    let post = |path: &'static str, body: Value| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let before = bulk_host_stats().tasks;
            let r = client.post(format!("{base}{path}")).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(r.headers()["content-type"], "application/json", "{path}");
            let v: Value = r.json().await.unwrap();
            (v, bulk_host_stats().tasks - before)
        }
    };
    let floats = |v: &Value| -> Vec<Vec<f32>> { serde_json::from_value(v.clone()).unwrap() };

    // The same texts as one bulk request, then as an interactive one (named in the body).
    let (bulk, on_pool) = post("/embed", json!({"inputs": texts})).await;
    assert_eq!(on_pool, 2, "a bulk /embed: tokenizing and encoding on the pool");
    let (interactive, on_pool) = post("/embed", json!({"inputs": texts, "priority": "interactive"})).await;
    assert_eq!(on_pool, 0, "an interactive /embed stays off the pool");
    let (bulk, interactive) = (floats(&bulk), floats(&interactive));
    assert_eq!(bulk.len(), texts.len());
    embed_testkit::assert_max_abs_diff("bulk vs interactive /embed", &bulk, &interactive, 0.0);

    let (openai, on_pool) = post("/v1/embeddings", json!({"input": texts, "model": "tiny"})).await;
    assert_eq!(on_pool, 2, "a bulk /v1/embeddings");
    let data = openai["data"].as_array().unwrap();
    assert_eq!(data.len(), texts.len());
    let openai_rows: Vec<Vec<f32>> = data.iter().map(|d| floats(&json!([d["embedding"]])).remove(0)).collect();
    embed_testkit::assert_max_abs_diff("/v1/embeddings vs /embed", &openai_rows, &bulk, 0.0);
    assert_eq!(openai["usage"]["prompt_tokens"].as_u64(), openai["usage"]["total_tokens"].as_u64());

    let (cohere, on_pool) = post("/v2/embed", json!({"texts": texts, "model": "tiny", "input_type": "search_document", "embedding_types": ["float", "int8"]})).await;
    assert_eq!(on_pool, 2, "a bulk /v2/embed");
    assert_eq!(cohere["embeddings"]["float"].as_array().unwrap().len(), texts.len());
    assert_eq!(cohere["embeddings"]["int8"].as_array().unwrap().len(), texts.len());
    assert_eq!(cohere["texts"].as_array().unwrap().len(), texts.len());

    let (_, on_pool) = post("/embed", json!({"inputs": "a single query"})).await;
    assert_eq!(on_pool, 0, "a one-text query stays off the pool");

    let stats = bulk_host_stats();
    assert!(stats.threads >= 1, "{stats:?}");
    #[cfg(target_os = "linux")]
    assert_eq!(stats.lowered, stats.threads, "every bulk host thread runs {BULK_NICE} nice steps lower: {stats:?}");
    assert!(served.finish().await.drained);
}
