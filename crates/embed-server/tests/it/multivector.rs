//! `/embed_multi`, and the rerank routes on multi-vector models, over the BGE-M3 and PyLate
//! fixtures (`python/make_multivector_fixtures.py`): vectors as floats and as base64 equal to
//! the references, `/rerank`, `/v1/rerank` and `/v2/rerank` equal to MaxSim over the reference
//! vectors, BGE-M3's three outputs from one loaded model, and the errors (wrong kind, bad
//! bodies).

use crate::common;

use axum::http::StatusCode;
use axum::Router;
use base64::Engine;
use common::inproc::send;
use embed_core::ModelSpec;
use embed_pool::{ModelRegistry, Pool, PoolConfig};
use embed_server::{router, AppState, ServerConfig};
use embed_testkit::fixture_dir;
use serde_json::{json, Value};

fn app() -> Router {
    let spec = |name: &str| ModelSpec::new(fixture_dir(name).to_string_lossy()).named(name);
    let registry = ModelRegistry::new().with("m3", spec("xlm-roberta-m3")).with("colbert", spec("bert-colbert")).with("bert", spec("bert"));
    router(AppState::new(Pool::new(PoolConfig::default().with_max_models(3), registry), ServerConfig::new("m3")))
}

async fn post(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, v, _) = send(app, "POST", path, Some(&body.to_string()), &[]).await;
    (status, v)
}

fn reference(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture_dir(name).join("reference.json")).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

fn max_sim(q: &[Vec<f32>], d: &[Vec<f32>]) -> f32 {
    embed_core::max_sim(q, d).expect("equal widths")
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_multi_floats_and_base64_match_the_references() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app();
    let m3 = reference("xlm-roberta-m3");
    let items = &m3["items"].as_array().unwrap()[..4];
    let texts: Vec<&str> = items.iter().map(|it| it["text"].as_str().unwrap()).collect();
    let (status, floats_v) = post(&app, "/embed_multi", json!({"inputs": texts})).await;
    assert_eq!(status, 200, "{floats_v}");
    let (status, b64) = post(&app, "/embed_multi", json!({"inputs": texts, "encoding_format": "base64"})).await;
    assert_eq!(status, 200, "{b64}");
    let mut checked = 0;
    for (i, it) in items.iter().enumerate() {
        let want = vectors(&it["colbert"]);
        let got = vectors(&floats_v[i]);
        let encoded = b64[i].as_array().unwrap();
        assert_eq!((got.len(), encoded.len()), (want.len(), want.len()), "item {i}");
        for ((g, e), w) in got.iter().zip(encoded).zip(&want) {
            assert!(cosine(g, w) >= 0.99999, "item {i}: cosine {}", cosine(g, w));
            let bytes = base64::engine::general_purpose::STANDARD.decode(e.as_str().unwrap()).unwrap();
            let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            assert_eq!(&decoded, g, "item {i}: base64 holds the same f32 values");
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} vectors");
    // One string input is one item.
    let (status, v) = post(&app, "/embed_multi", json!({"inputs": texts[0]})).await;
    assert_eq!((status, v.as_array().unwrap().len()), (StatusCode::OK, 1), "{v}");

    // The same loaded model gives the dense and the sparse outputs.
    let (status, dense) = post(&app, "/embed", json!({"inputs": texts[0]})).await;
    assert_eq!(status, 200, "{dense}");
    assert!(cosine(&floats(&dense[0]), &floats(&items[0]["dense"])) >= 0.99999);
    let (status, sparse) = post(&app, "/embed_sparse", json!({"inputs": texts[3]})).await;
    assert_eq!(status, 200, "{sparse}");
    let want: Vec<u64> = items[3]["lexical"].as_array().unwrap().iter().map(|e| e[0].as_u64().unwrap()).collect();
    let got: Vec<u64> = sparse[0].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert_eq!(got, want, "lexical token ids");

    // PyLate: documents and queries by input_type.
    let colbert = reference("bert-colbert");
    for (side, input_type) in [("document", "document"), ("query", "query")] {
        let it = &colbert[side][0];
        let (status, v) = post(&app, "/embed_multi", json!({"model": "colbert", "inputs": [it["text"]], "input_type": input_type})).await;
        assert_eq!(status, 200, "{v}");
        let (got, want) = (vectors(&v[0]), vectors(&it["vectors"]));
        assert_eq!(got.len(), want.len(), "{side}");
        assert!(got.iter().zip(&want).all(|(g, w)| cosine(g, w) >= 0.99999), "{side}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_routes_score_by_max_sim_over_the_reference_vectors() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app();
    let colbert = reference("bert-colbert");
    // MaxSim computed here from the reference vectors of the first query and its documents.
    let q = vectors(&colbert["query"][0]["vectors"]);
    let query = colbert["query"][0]["text"].as_str().unwrap();
    let docs: Vec<&Value> = colbert["document"].as_array().unwrap()[..5].iter().collect();
    let texts: Vec<&str> = docs.iter().map(|d| d["text"].as_str().unwrap()).collect();
    let expected: Vec<f32> = docs.iter().map(|d| max_sim(&q, &vectors(&d["vectors"]))).collect();
    let (status, v) = post(&app, "/rerank", json!({"model": "colbert", "query": query, "texts": texts})).await;
    assert_eq!(status, 200, "{v}");
    let ranks = v.as_array().unwrap();
    assert_eq!(ranks.len(), texts.len());
    for w in ranks.windows(2) {
        assert!(w[0]["score"].as_f64() >= w[1]["score"].as_f64(), "best first: {v}");
    }
    for r in ranks {
        let i = r["index"].as_u64().unwrap() as usize;
        let got = r["score"].as_f64().unwrap() as f32;
        assert!((got - expected[i]).abs() <= 1e-4 * expected[i].abs().max(1.0), "doc {i}: {got} vs MaxSim {}", expected[i]);
    }
    for path in ["/v1/rerank", "/v2/rerank"] {
        let (status, v) = post(&app, path, json!({"model": "colbert", "query": query, "documents": texts, "top_n": 2})).await;
        assert_eq!(status, 200, "{path}: {v}");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 2, "{path}");
        let best = expected.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!((results[0]["relevance_score"].as_f64().unwrap() as f32 - best).abs() <= 1e-4 * best.abs().max(1.0), "{path}: {v}");
    }

    // BGE-M3: FlagEmbedding's colbert_score (MaxSim over the query's vectors, averaged).
    let m3 = reference("xlm-roberta-m3");
    let r = &m3["rerank"][1];
    let (status, v) = post(&app, "/rerank", json!({"model": "m3", "query": r["query"], "texts": r["documents"], "raw_scores": true})).await;
    assert_eq!(status, 200, "{v}");
    let want = floats(&r["scores"]);
    for rank in v.as_array().unwrap() {
        let i = rank["index"].as_u64().unwrap() as usize;
        assert!((rank["score"].as_f64().unwrap() as f32 - want[i]).abs() <= 1e-4, "{rank} vs {}", want[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_kinds_and_bad_bodies_are_refused() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app();
    // A plain embedder has no token head.
    let (status, v) = post(&app, "/embed_multi", json!({"model": "bert", "inputs": ["x"]})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("embed_multi"), "{v}");
    // A plain embedder still cannot rerank; a ColBERT model cannot /embed or /embed_sparse.
    let (status, v) = post(&app, "/v1/rerank", json!({"model": "bert", "query": "q", "documents": ["a"]})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("wrong_model_kind")), "{v}");
    let (status, v) = post(&app, "/v1/embeddings", json!({"model": "colbert", "input": "x"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("wrong_model_kind")), "{v}");
    for path in ["/embed", "/embed_sparse"] {
        let (status, v) = post(&app, path, json!({"model": "colbert", "inputs": "x"})).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains("multi_vector"), "{path}: {v}");
    }
    // No instruction prompt on a multi-vector model.
    let (status, v) = post(&app, "/rerank", json!({"model": "colbert", "query": "q", "texts": ["a"], "instruction": "x"})).await;
    assert_eq!(status, 422, "{v}");
    // Bad bodies: unknown encoding, unknown input_type, unknown field, no inputs.
    for body in [
        json!({"inputs": ["x"], "encoding_format": "int8"}),
        json!({"inputs": ["x"], "input_type": "passage"}),
        json!({"inputs": ["x"], "pooling": "cls"}),
        json!({}),
    ] {
        let (status, v) = post(&app, "/embed_multi", body.clone()).await;
        assert_eq!(status, 422, "{body}: {v}");
    }
    // Too long without truncation.
    let long = "word ".repeat(200);
    let (status, v) = post(&app, "/embed_multi", json!({"inputs": [long], "truncate": false})).await;
    assert_eq!(status, 422, "{v}");
}
