//! The task routes over the task fixtures (a cross-encoder, a classifier, a SPLADE encoder)
//! beside a sentence embedder: every route's shape and its errors, results equal to the
//! references sentence-transformers computed, `POST /` dispatching by kind, and Cohere's own
//! Python client against `/v1/rerank` and `/v2/rerank`; TEI's remaining routes in `tei_compat`.

use crate::common;
mod tei_compat;

use std::process::Command;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use common::inproc::send;
use embed_core::{LlmReranker, ModelOptions, ModelSpec, RetrievalTasks};
use embed_pool::{ModelRegistry, Pool, PoolConfig};
use embed_server::{router, AppState, ServerConfig};
use embed_testkit::{fixture_dir, fixture_reference, task_reference, workspace_root};
use serde_json::{json, Value};

fn app(default_model: &str) -> Router {
    let spec = |name: &str| ModelSpec::new(fixture_dir(name).to_string_lossy()).named(name);
    let registry = ModelRegistry::new()
        .with("bert", spec("bert"))
        .with("reranker", spec("bert-reranker"))
        .with("classifier", spec("bert-classifier"))
        .with("splade", spec("bert-splade"))
        .with("llm-reranker", spec("qwen3-reranker").with_options(ModelOptions::default().with_llm_reranker(LlmReranker::qwen3())));
    router(AppState::new(Pool::new(PoolConfig::default().with_max_models(5), registry), ServerConfig::new(default_model)))
}

async fn post(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, v, _) = send(app, "POST", path, Some(&body.to_string()), &[]).await;
    (status, v)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_ranks_by_the_cross_encoders_scores() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("bert");
    let items = task_reference("bert-reranker");
    let query = items[0].query.clone().unwrap();
    let group: Vec<_> = items.iter().filter(|i| i.query.as_deref() == Some(query.as_str())).collect();
    let texts: Vec<&str> = group.iter().map(|i| i.text.as_str()).collect();
    let (status, v) = post(&app, "/rerank", json!({"model": "reranker", "query": query, "texts": texts, "return_text": true})).await;
    assert_eq!(status, 200, "{v}");
    let ranks = v.as_array().unwrap();
    assert_eq!(ranks.len(), texts.len());
    for w in ranks.windows(2) {
        assert!(w[0]["score"].as_f64() >= w[1]["score"].as_f64(), "best first: {v}");
    }
    for r in ranks {
        let i = r["index"].as_u64().unwrap() as usize;
        assert_eq!(r["text"], texts[i]);
        let expected = sigmoid(group[i].logits[0]);
        assert!((r["score"].as_f64().unwrap() as f32 - expected).abs() < 1e-5, "{r} vs {expected}");
    }
    // raw_scores: the logits; without return_text, no text field.
    let (status, v) = post(&app, "/rerank", json!({"model": "reranker", "query": query, "texts": texts, "raw_scores": true})).await;
    assert_eq!(status, 200);
    for r in v.as_array().unwrap() {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((r["score"].as_f64().unwrap() as f32 - group[i].logits[0]).abs() < 1e-4, "{r}");
        assert!(r.get("text").is_none(), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_refuses_the_wrong_kind_and_bad_bodies() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("bert");
    // The default model embeds; it cannot rerank.
    let (status, v) = post(&app, "/rerank", json!({"query": "q", "texts": ["a"]})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("embedding"), "{v}");
    let (status, v) = post(&app, "/v1/rerank", json!({"query": "q", "documents": ["a"]})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "wrong_model_kind", "OpenAI shape on /v1/: {v}");
    for (path, body) in [
        ("/embed", json!({"model": "reranker", "inputs": "x"})),
        ("/embed_sparse", json!({"model": "bert", "inputs": "x"})),
        ("/predict", json!({"model": "splade", "inputs": "x"})),
        ("/embed_all", json!({"model": "classifier", "inputs": "x"})),
    ] {
        let (status, v) = post(&app, path, body).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error_type"], "Validation", "{path}: {v}");
    }
    // Bad bodies: empty lists, wrong types, unknown fields, a missing query.
    for (path, body, field) in [
        ("/rerank", json!({"model": "reranker", "query": "q", "texts": []}), "texts"),
        ("/rerank", json!({"model": "reranker", "query": "q", "texts": "a"}), "texts"),
        ("/rerank", json!({"model": "reranker", "texts": ["a"]}), "query"),
        ("/rerank", json!({"model": "reranker", "query": "q", "texts": ["a"], "bogus": 1}), "bogus"),
        ("/predict", json!({"model": "classifier", "inputs": [["a", "b", "c"]]}), "inputs"),
        ("/predict", json!({"model": "classifier", "inputs": 3}), "inputs"),
        ("/embed_sparse", json!({"model": "splade", "inputs": []}), "inputs"),
        ("/decode", json!({"model": "bert", "ids": [1, -2]}), "ids"),
        ("/decode", json!({"model": "bert", "ids": "12"}), "ids"),
    ] {
        let (status, v) = post(&app, path, body.clone()).await;
        assert_eq!(status, 422, "{path} {body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{path} {body}: {v}");
    }
    let (status, v) = post(&app, "/v1/rerank", json!({"model": "reranker", "query": "q", "documents": [1]})).await;
    assert_eq!((status, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("documents")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("documents[0]"), "{v}");
    let (status, v) = post(&app, "/v1/rerank", json!({"model": "reranker", "query": "q", "documents": ["a"], "top_n": 0})).await;
    assert_eq!((status, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("top_n")), "{v}");
    // Too long without truncation: the pair's token count and the limit.
    let long = task_reference("bert-reranker").into_iter().find(|i| i.truncated).unwrap();
    let (status, v) =
        post(&app, "/rerank", json!({"model": "reranker", "query": long.query, "texts": [long.text], "truncate": false})).await;
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("limit of 64"), "{v}");
    // Unknown models are 404 on every route.
    let (status, _) = post(&app, "/rerank", json!({"model": "nope", "query": "q", "texts": ["a"]})).await;
    assert_eq!(status, 404);
}

/// The decoder-reranker fixture's reference items under `instruction` (`None`: the default)
/// for its first query with that instruction: (query, [(document, score)]).
fn llm_group(instruction: Option<&str>) -> (String, Vec<(String, f32)>) {
    let path = fixture_dir("qwen3-reranker").join("reference.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let items: Vec<&Value> = v["items"].as_array().unwrap().iter().filter(|i| i["instruction"].as_str() == instruction).collect();
    let query = items[0]["query"].as_str().unwrap().to_string();
    let group = items
        .iter()
        .filter(|i| i["query"] == query.as_str())
        .map(|i| (i["text"].as_str().unwrap().to_string(), i["score"].as_f64().unwrap() as f32))
        .collect();
    (query, group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_rerankers_take_an_instruction_on_every_rerank_route() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("bert");
    let instruction = "Given a package name, find the package description that matches it";
    for which in [None, Some(instruction)] {
        let (query, group) = llm_group(which);
        assert!(group.len() >= 3, "{group:?}");
        let texts: Vec<&str> = group.iter().map(|g| g.0.as_str()).collect();
        let mut body = json!({"model": "llm-reranker", "query": query, "texts": texts});
        if let Some(i) = which {
            body["instruction"] = json!(i);
        }
        let (status, v) = post(&app, "/rerank", body).await;
        assert_eq!(status, 200, "{v}");
        let ranks = v.as_array().unwrap();
        assert_eq!(ranks.len(), group.len());
        for w in ranks.windows(2) {
            assert!(w[0]["score"].as_f64() >= w[1]["score"].as_f64(), "best first: {v}");
        }
        for r in ranks {
            let expected = group[r["index"].as_u64().unwrap() as usize].1;
            assert!((r["score"].as_f64().unwrap() as f32 - expected).abs() < 1e-4, "{which:?}: {r} vs the model card's {expected}");
        }
        for path in ["/v1/rerank", "/v2/rerank"] {
            let mut body = json!({"model": "llm-reranker", "query": query, "documents": texts});
            if let Some(i) = which {
                body["instruction"] = json!(i);
            }
            let (status, v) = post(&app, path, body).await;
            assert_eq!(status, 200, "{path}: {v}");
            let results = v["results"].as_array().unwrap();
            assert_eq!(results.len(), group.len(), "{path}");
            for r in results {
                let expected = group[r["index"].as_u64().unwrap() as usize].1;
                assert!((r["relevance_score"].as_f64().unwrap() as f32 - expected).abs() < 1e-4, "{path} {which:?}: {r} vs {expected}");
            }
        }
    }
    // The instruction is not ignored: another one gives other scores for the same pairs.
    let (query, group) = llm_group(Some(instruction));
    let texts: Vec<&str> = group.iter().map(|g| g.0.as_str()).collect();
    let (_, with) = post(&app, "/rerank", json!({"model": "llm-reranker", "query": query, "texts": texts, "instruction": instruction})).await;
    let (_, without) = post(&app, "/rerank", json!({"model": "llm-reranker", "query": query, "texts": texts})).await;
    let score_of = |v: &Value, k: u64| v.as_array().unwrap().iter().find(|r| r["index"] == k).unwrap()["score"].as_f64().unwrap();
    assert!((0..texts.len() as u64).any(|k| (score_of(&with, k) - score_of(&without, k)).abs() > 1e-3), "{with} vs {without}");

    // A cross-encoder has no instruction prompt: refused naming the field, in each route's shape
    // (a bad value: 422 on TEI's route, 400 on the OpenAI-shaped ones).
    let (status, v) = post(&app, "/rerank", json!({"model": "reranker", "query": "q", "texts": ["a"], "instruction": "x"})).await;
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("instruction"), "{v}");
    assert_eq!(v["error_type"], "Validation", "{v}");
    for path in ["/v1/rerank", "/v2/rerank"] {
        let (status, v) = post(&app, path, json!({"model": "reranker", "query": "q", "documents": ["a"], "instruction": "x"})).await;
        assert_eq!((status, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("instruction")), "{path}: {v}");
    }
    // An embedder is still the wrong kind, with or without an instruction.
    for path in ["/v1/rerank", "/v2/rerank"] {
        let (status, v) = post(&app, path, json!({"model": "bert", "query": "q", "documents": ["a"], "instruction": "x"})).await;
        assert_eq!((status, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("wrong_model_kind")), "{path}: {v}");
    }
    // The LLM reranker embeds nothing: wrong kind on /embed.
    let (status, v) = post(&app, "/embed", json!({"model": "llm-reranker", "inputs": "x"})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("reranker"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_shape_with_top_n_and_documents() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("reranker");
    let items = task_reference("bert-reranker");
    let query = items[0].query.clone().unwrap();
    let group: Vec<_> = items.iter().filter(|i| i.query.as_deref() == Some(query.as_str())).collect();
    let docs: Vec<Value> = group.iter().enumerate().map(|(k, i)| if k % 2 == 0 { json!(i.text) } else { json!({"text": i.text}) }).collect();
    let (status, v) = post(&app, "/v1/rerank", json!({"query": query, "documents": docs, "top_n": 2, "return_documents": true})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "reranker");
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "top_n");
    let mut best: Vec<(usize, f32)> = group.iter().enumerate().map(|(k, i)| (k, sigmoid(i.logits[0]))).collect();
    best.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (r, (k, score)) in results.iter().zip(&best) {
        assert_eq!(r["index"].as_u64(), Some(*k as u64), "{v}");
        assert!((r["relevance_score"].as_f64().unwrap() as f32 - score).abs() < 1e-5);
        assert_eq!(r["document"]["text"], group[*k].text);
    }
    let tokens: usize = group.iter().map(|i| i.token_count).sum();
    assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(tokens as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_gives_labels_for_texts_pairs_and_batches() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("classifier");
    let items = task_reference("bert-classifier");
    let (status, v) = post(&app, "/predict", json!({"inputs": items[0].text})).await;
    assert_eq!(status, 200, "{v}");
    let preds = v.as_array().unwrap();
    assert_eq!(preds.len(), 3);
    let sum: f64 = preds.iter().map(|p| p["score"].as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-5, "softmax: {v}");
    let best = items[0].logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert_eq!(preds[0]["label"], ["negative", "neutral", "positive"][best], "best first: {v}");
    // A batch of texts: one list per input; raw scores are the logits.
    let texts: Vec<Value> = items.iter().take(3).map(|i| json!([i.text])).collect();
    let (status, v) = post(&app, "/predict", json!({"inputs": texts, "raw_scores": true})).await;
    assert_eq!(status, 200, "{v}");
    for (answer, it) in v.as_array().unwrap().iter().zip(&items) {
        for p in answer.as_array().unwrap() {
            let label = ["negative", "neutral", "positive"].iter().position(|l| p["label"] == *l).unwrap();
            assert!((p["score"].as_f64().unwrap() as f32 - it.logits[label]).abs() < 1e-4, "{p}");
        }
    }
    // A cross-encoder predicts on a pair: its sigmoid score under LABEL_0.
    let pair = task_reference("bert-reranker").remove(0);
    let (status, v) = post(&app, "/predict", json!({"model": "reranker", "inputs": [pair.query, pair.text]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v[0]["label"], "LABEL_0");
    assert!((v[0]["score"].as_f64().unwrap() as f32 - sigmoid(pair.logits[0])).abs() < 1e-5, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_sparse_embed_all_decode_and_root() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("splade");
    let items = task_reference("bert-splade");
    let texts: Vec<&str> = items.iter().take(4).map(|i| i.text.as_str()).collect();
    let (status, v) = post(&app, "/embed_sparse", json!({"inputs": texts})).await;
    assert_eq!(status, 200, "{v}");
    for (vec, it) in v.as_array().unwrap().iter().zip(&items) {
        let entries = vec.as_array().unwrap();
        let indices: Vec<u32> = entries.iter().map(|e| e["index"].as_u64().unwrap() as u32).collect();
        assert_eq!(indices, it.indices, "{:?}", it.text);
        for (e, want) in entries.iter().zip(&it.values) {
            assert!((e["value"].as_f64().unwrap() as f32 - want).abs() < 1e-4);
        }
    }
    // POST / on a SPLADE model is /embed_sparse; on a cross-encoder /rerank; on an embedder /embed.
    let (status, root) = post(&app, "/", json!({"inputs": texts})).await;
    assert_eq!((status, &root), (StatusCode::OK, &v));
    let (status, v) = post(&app, "/", json!({"model": "reranker", "query": "q", "texts": ["a", "b"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(v[0]["index"].is_u64() && v[0]["score"].is_f64(), "{v}");
    let (status, v) = post(&app, "/", json!({"model": "bert", "inputs": ["a", "b"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(v[0].as_array().unwrap().iter().all(Value::is_f64), "{v}");
    let (status, v) = post(&app, "/", json!({"model": "classifier", "inputs": "a text"})).await;
    assert_eq!((status, v[0]["label"].is_string()), (StatusCode::OK, true), "{v}");

    // /embed_all: one vector per token, the first (CLS) normalised is the bert embedding.
    let reference = fixture_reference("bert");
    let (status, v) = post(&app, "/embed_all", json!({"model": "bert", "inputs": [reference[0].text]})).await;
    assert_eq!(status, 200, "{v}");
    let tokens = v[0].as_array().unwrap();
    assert_eq!(tokens.len(), reference[0].token_count);
    let cls: Vec<f32> = tokens[0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let norm = cls.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cls: Vec<f32> = cls.iter().map(|x| x / norm).collect();
    assert!(embed_testkit::cosine(&cls, &reference[0].embedding) > 0.99999);

    // /decode: ids from /tokenize back to text, special tokens kept on request.
    let (_, tok) = post(&app, "/tokenize", json!({"model": "bert", "inputs": "the model"})).await;
    let ids: Vec<u64> = tok[0].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let (status, v) = post(&app, "/decode", json!({"model": "bert", "ids": ids})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!(["the model"]));
    let (status, v) = post(&app, "/decode", json!({"model": "bert", "ids": [ids.clone(), ids], "skip_special_tokens": false})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(v[0].as_str().unwrap().starts_with("[CLS]"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_model_lists_report_kinds() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("classifier");
    let _ = post(&app, "/predict", json!({"inputs": "warm"})).await;
    let _ = post(&app, "/rerank", json!({"model": "reranker", "query": "q", "texts": ["a"]})).await;
    let (status, info, _) = send(&app, "GET", "/info", None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(info["kind"], "classifier", "{info}");
    assert_eq!(info["model_type"]["classifier"]["id2label"]["2"], "positive", "{info}");
    assert_eq!(info["model_type"]["classifier"]["label2id"]["neutral"], 1, "{info}");
    let (_, models, _) = send(&app, "GET", "/models", None, &[]).await;
    let kind_of = |name: &str| models["loaded"].as_array().unwrap().iter().find(|m| m["name"] == name).map(|m| m["kind"].clone());
    assert_eq!(kind_of("classifier"), Some(json!("classifier")), "{models}");
    assert_eq!(kind_of("reranker"), Some(json!("reranker")), "{models}");
    let (_, list, _) = send(&app, "GET", "/v1/models", None, &[]).await;
    let card = |id: &str| list["data"].as_array().unwrap().iter().find(|m| m["id"] == id).cloned().unwrap();
    assert_eq!(card("reranker")["kind"], "reranker", "{list}");
    assert!(card("splade").get("kind").is_none(), "not loaded yet: no kind: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_cohere_client_reranks_through_the_server() {
    let _gate = embed_testkit::module_gate(module_path!());
    let python = workspace_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing; run `cargo xtask setup`", python.display());
    let model = format!("reranker={}", fixture_dir("bert-reranker").display());
    let server = common::Server::start(&["--model", &model, "--api-key", "test-key"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let items = task_reference("bert-reranker");
    let query = items[0].query.clone().unwrap();
    let group: Vec<_> = items.iter().filter(|i| i.query.as_deref() == Some(query.as_str())).collect();
    let base = server.base.clone();
    let args: Vec<String> = group.iter().map(|i| i.text.clone()).collect();
    let q = query.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(workspace_root().join("python/cohere_client_check.py"))
            .args([base.as_str(), "test-key", "reranker", q.as_str()])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "client failed:\n{}\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut best: Vec<(usize, f32)> = group.iter().enumerate().map(|(k, i)| (k, sigmoid(i.logits[0]))).collect();
    best.sort_by(|a, b| b.1.total_cmp(&a.1));
    let v1 = v["v1"].as_array().unwrap();
    assert_eq!(v1.len(), 2, "top_n=2: {v}");
    for (r, (k, score)) in v1.iter().zip(&best) {
        assert_eq!(r["index"].as_u64(), Some(*k as u64), "{v}");
        assert!((r["score"].as_f64().unwrap() as f32 - score).abs() < 1e-5, "{v}");
        assert_eq!(r["text"], group[*k].text, "returned documents: {v}");
    }
    let v2 = v["v2"].as_array().unwrap();
    assert_eq!(v2.len(), group.len(), "{v}");
    assert_eq!(v2[0]["index"].as_u64(), Some(best[0].0 as u64), "{v}");
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
}

/// text-embeddings-inference's timing headers on `/rerank` and `/predict`: the tokens are the
/// pairs' tokens as embed-core itself counts them, the characters both texts of every pair, and
/// the stages add up to the compute time within the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_and_predict_carry_timing_headers() {
    let _gate = embed_testkit::module_gate(module_path!());
    use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService};
    let app = app("classifier");
    let number = |h: &axum::http::HeaderMap, name: &str| -> u64 {
        h.get(name).unwrap_or_else(|| panic!("no {name}: {h:?}")).to_str().unwrap().parse().unwrap()
    };
    let consistent = |h: &axum::http::HeaderMap| {
        let stages = number(h, "x-tokenization-time") + number(h, "x-queue-time") + number(h, "x-inference-time");
        let compute = number(h, "x-compute-time");
        assert!((stages..=stages + 2).contains(&compute), "{h:?}");
        assert!(number(h, "x-total-time") >= compute, "{h:?}");
    };
    let query = "what is a cat";
    let texts = vec!["a cat is a small feline".to_string(), "stocks fell sharply".to_string(), "cats purr — ünïcode".to_string()];
    let body = json!({"model": "reranker", "query": query, "texts": texts}).to_string();
    let (status, v, h) = send(&app, "POST", "/rerank", Some(&body), &[]).await;
    assert_eq!(status, 200, "{v}");
    let lib = DenseEmbeddingService::from_spec(ModelSpec::new(fixture_dir("bert-reranker").to_string_lossy())).await.unwrap();
    let counted = lib.rerank(query, &texts, &EmbedOptions::default()).await.unwrap();
    lib.cleanup().await.unwrap();
    assert_eq!(number(&h, "x-compute-tokens"), counted.token_counts.iter().sum::<usize>() as u64);
    let characters = texts.iter().map(|t| query.chars().count() + t.chars().count()).sum::<usize>();
    assert_eq!(number(&h, "x-compute-characters"), characters as u64);
    consistent(&h);

    let (status, v, h) = send(&app, "POST", "/predict", Some(&json!({"inputs": "a fine day"}).to_string()), &[]).await;
    assert_eq!(status, 200, "{v}");
    let (_, tokens, _) = send(&app, "POST", "/tokenize", Some(&json!({"model": "classifier", "inputs": "a fine day"}).to_string()), &[]).await;
    assert_eq!(number(&h, "x-compute-tokens"), tokens[0].as_array().unwrap().len() as u64, "{tokens}");
    assert_eq!(number(&h, "x-compute-characters"), 10);
    consistent(&h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_sparse_return_text_names_each_index() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("splade");
    // The fixture's vocabulary by id, read from tokenizer.json itself.
    let tokenizer: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir("bert-splade").join("tokenizer.json")).unwrap()).unwrap();
    let vocab: std::collections::HashMap<u64, String> =
        tokenizer["model"]["vocab"].as_object().unwrap().iter().map(|(t, id)| (id.as_u64().unwrap(), t.clone())).collect();
    let items = task_reference("bert-splade");
    let texts: Vec<&str> = items.iter().take(3).map(|i| i.text.as_str()).collect();
    let (status, plain) = post(&app, "/embed_sparse", json!({"inputs": texts})).await;
    assert_eq!(status, 200, "{plain}");
    assert!(plain[0][0].get("text").is_none(), "no text unless asked: {}", plain[0][0]);
    let (status, v) = post(&app, "/embed_sparse", json!({"inputs": texts, "return_text": true})).await;
    assert_eq!(status, 200, "{v}");
    let vectors = v.as_array().unwrap();
    assert_eq!(vectors.len(), texts.len());
    let mut checked = 0;
    for (with, without) in vectors.iter().zip(plain.as_array().unwrap()) {
        let (with, without) = (with.as_array().unwrap(), without.as_array().unwrap());
        assert_eq!(with.len(), without.len());
        for (e, p) in with.iter().zip(without) {
            assert_eq!((&e["index"], &e["value"]), (&p["index"], &p["value"]), "the same entries");
            let id = e["index"].as_u64().unwrap();
            assert_eq!(e["text"].as_str(), vocab.get(&id).map(String::as_str), "token of {id}");
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} entries checked");
    // A single string too, and the option is refused on /embed_all (not a field there).
    let (status, one) = post(&app, "/embed_sparse", json!({"inputs": texts[0], "return_text": true})).await;
    assert_eq!((status, &one[0]), (StatusCode::OK, &v[0]));
    let (status, err) = post(&app, "/embed_all", json!({"model": "bert", "inputs": "a", "return_text": true})).await;
    assert_eq!(status, 422, "{err}");
    assert!(err["error"].as_str().unwrap().contains("return_text"), "{err}");
    let (status, err) = post(&app, "/embed_sparse", json!({"inputs": "a", "return_text": "yes"})).await;
    assert_eq!(status, 422, "{err}");
    // The OpenAPI document has the option and the field.
    let doc = serde_json::to_value(embed_server::openapi()).unwrap();
    let body = &doc["paths"]["/embed_sparse"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(body, "#/components/schemas/SparseRequest");
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["SparseRequest"]["properties"]["return_text"]["default"], json!(false), "{}", schemas["SparseRequest"]);
    assert!(schemas["SparseValue"]["properties"]["text"].is_object(), "{}", schemas["SparseValue"]);
    assert_eq!(schemas["SparseValue"]["required"], json!(["index", "value"]), "{}", schemas["SparseValue"]);
}
