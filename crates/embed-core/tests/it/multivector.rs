//! Multi-output and late-interaction models against their libraries' computations
//! (`testdata/fixtures/xlm-roberta-m3` and `bert-colbert`, written by
//! `python/make_multivector_fixtures.py`).
//!
//! BGE-M3: one load gives the dense vector (`embed_texts`: cosine ≥ 0.99999), the lexical
//! weights (`embed_sparse`: the same token ids, values within 1e-5) and the ColBERT vectors
//! (`embed_multi`: as many as the reference, each cosine ≥ 0.99999), and `rerank` is
//! FlagEmbedding's `colbert_score`. PyLate: query vectors (marker, `[MASK]` expansion not
//! attended to) and document vectors (marker, skiplist) each cosine ≥ 0.99999, and `rerank` is
//! PyLate's MaxSim. Wrong kinds are refused, and a load/cleanup cycle frees every weight.

use embed_core::memory::{live_models, live_weight_bytes, model_threads};
use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, Error, InputMode, ModelKind, ModelSpec, Offload, RetrievalTasks};
use embed_testkit::{fixture_dir, serial};
use serde_json::Value;

const M3: &str = "xlm-roberta-m3";
const COLBERT: &str = "bert-colbert";

fn reference(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture_dir(name).join("reference.json")).unwrap()).unwrap()
}

async fn load(name: &str) -> DenseEmbeddingService {
    DenseEmbeddingService::from_spec(ModelSpec::new(fixture_dir(name).to_string_lossy()).named(name))
        .await
        .unwrap_or_else(|e| panic!("{name}: load failed: {e}"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().expect("array of vectors").iter().map(floats).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector widths");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Every vector of `got` against `want`, in order: the same count, each cosine ≥ 0.99999 and
/// of unit length. Returns the worst cosine (NaN-safe: a NaN fails the bound).
fn check_vectors(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: vector count");
    let mut worst = 1.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let c = cosine(g, w);
        assert!(c >= 0.99999, "{what}: vector {i}: cosine {c}");
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{what}: vector {i} has norm {norm}");
        worst = worst.min(c);
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bge_m3_gives_flagembeddings_three_outputs_from_one_load() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let reference = reference(M3);
    let items = reference["items"].as_array().expect("items");
    assert!(items.len() >= 10, "a reference of {} items", items.len());
    let texts: Vec<String> = items.iter().map(|it| it["text"].as_str().unwrap().to_string()).collect();
    let svc = load(M3).await;
    let info = svc.info().unwrap();
    assert_eq!(info.kind, ModelKind::Embedding);
    assert!(info.serves(ModelKind::Sparse) && info.serves(ModelKind::MultiVector) && !info.serves(ModelKind::Reranker), "{:?}", info.extra_outputs);
    let opts = EmbedOptions::default();

    let dense = svc.embed_texts(&texts, &opts).await.unwrap();
    let sparse = svc.embed_sparse(&texts, &opts).await.unwrap();
    let multi = svc.embed_multi(&texts, &opts).await.unwrap();
    assert_eq!((dense.vectors.len(), sparse.vectors.len(), multi.vectors.len()), (texts.len(), texts.len(), texts.len()));
    let (mut lexical_entries, mut colbert_vectors) = (0, 0);
    for (i, it) in items.iter().enumerate() {
        let what = format!("{M3} item {i} {:?}", &texts[i][..texts[i].len().min(30)]);
        let c = cosine(&dense.vectors[i], &floats(&it["dense"]));
        assert!(c >= 0.99999, "{what}: dense cosine {c}");
        let count = it["token_count"].as_u64().unwrap() as usize;
        let truncated = it["truncated"].as_bool().unwrap();
        assert_eq!((dense.token_counts[i], sparse.token_counts[i], multi.token_counts[i]), (count, count, count), "{what}: token counts");
        assert_eq!((dense.truncated[i], sparse.truncated[i], multi.truncated[i]), (truncated, truncated, truncated), "{what}: truncation");

        let want: Vec<(u32, f32)> =
            it["lexical"].as_array().unwrap().iter().map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32)).collect();
        let got = &sparse.vectors[i];
        assert_eq!(got.indices, want.iter().map(|e| e.0).collect::<Vec<_>>(), "{what}: lexical token ids");
        assert_eq!(got.values.len(), want.len(), "{what}: lexical values");
        for ((id, g), (_, w)) in got.indices.iter().zip(&got.values).zip(&want) {
            assert!((g - w).abs() <= 1e-5, "{what}: token {id}: weight {g} vs {w}");
        }
        lexical_entries += want.len();

        let want = vectors(&it["colbert"]);
        assert_eq!(want.len(), count - 1, "{what}: the reference has every token after [CLS]");
        check_vectors(&format!("{what}: colbert"), &multi.vectors[i], &want);
        colbert_vectors += want.len();
    }
    assert!(lexical_entries >= 30 && colbert_vectors >= 100, "{lexical_entries} lexical entries, {colbert_vectors} ColBERT vectors checked");

    // Reranking by late interaction: FlagEmbedding's colbert_score (MaxSim / query vectors).
    let mut pairs = 0;
    for r in reference["rerank"].as_array().unwrap() {
        let docs: Vec<String> = r["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
        let out = svc.rerank(r["query"].as_str().unwrap(), &docs, &opts).await.unwrap();
        let want = floats(&r["scores"]);
        assert_eq!(out.logits.len(), want.len());
        assert_eq!(out.scores(), out.logits, "MaxSim scores are returned as they are");
        for (g, w) in out.logits.iter().zip(&want) {
            assert!((g[0] - w).abs() <= 1e-4, "{M3}: MaxSim {} vs {w}", g[0]);
            pairs += 1;
        }
    }
    assert!(pairs >= 16, "{pairs} reranked pairs");
    let with_instruction = EmbedOptions::default().with_instruction("x");
    let err = svc.rerank("q", &["d".to_string()], &with_instruction).await.unwrap_err();
    assert!(matches!(err, Error::InvalidOption { name: "instruction", .. }), "{err}");

    // The kinds it is not.
    let err = svc.classify(&[embed_core::ClassifyInput::Text("x".into())], &opts).await.unwrap_err();
    assert!(matches!(err, Error::WrongKind { .. }), "{err}");
    svc.cleanup().await.unwrap();
    assert_eq!((live_models(), model_threads(), live_weight_bytes()), (0, 0, 0), "after cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pylate_colbert_query_and_document_vectors_and_max_sim() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let reference = reference(COLBERT);
    let svc = load(COLBERT).await;
    let info = svc.info().unwrap();
    assert_eq!((info.kind, info.dimension), (ModelKind::MultiVector, 16));
    let query_length = reference["query_length"].as_u64().unwrap() as usize;

    let mut checked = 0;
    for (side, mode) in [("query", InputMode::Query), ("document", InputMode::Document)] {
        let items = reference[side].as_array().unwrap();
        let texts: Vec<String> = items.iter().map(|it| it["text"].as_str().unwrap().to_string()).collect();
        let opts = EmbedOptions::default().with_mode(mode);
        let out = svc.embed_multi(&texts, &opts).await.unwrap();
        let tokens = svc.tokenize(&texts, &opts).await.unwrap();
        for (i, it) in items.iter().enumerate() {
            let what = format!("{COLBERT} {side} {i}");
            let ids: Vec<u32> = it["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            if mode == InputMode::Query {
                // Every token kept: [CLS] [Q] … [SEP] [MASK]… to query_length.
                assert_eq!(tokens[i].ids, ids, "{what}: token ids");
                assert_eq!(ids.len(), query_length, "{what}");
            } else {
                // The skiplist's tokens are the ones missing.
                let kept: Vec<u32> = tokens[i].ids.iter().copied().filter(|id| ids.contains(id)).collect();
                assert_eq!(kept, ids, "{what}: the document's kept tokens");
            }
            check_vectors(&what, &out.vectors[i], &vectors(&it["vectors"]));
            checked += 1;
        }
    }
    assert!(checked >= 25, "{checked} texts checked");
    // Without a mode, queries (PyLate's default).
    let q = reference["query"][0]["text"].as_str().unwrap().to_string();
    let plain = svc.embed_multi(std::slice::from_ref(&q), &EmbedOptions::default()).await.unwrap();
    assert_eq!(plain.vectors[0].len(), query_length);

    let mut pairs = 0;
    for r in reference["rerank"].as_array().unwrap() {
        let docs: Vec<String> = r["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
        let out = svc.rerank(r["query"].as_str().unwrap(), &docs, &EmbedOptions::default()).await.unwrap();
        for (g, w) in out.logits.iter().zip(floats(&r["scores"])) {
            assert!((g[0] - w).abs() <= 1e-4 * w.abs().max(1.0), "{COLBERT}: MaxSim {} vs {w}", g[0]);
            pairs += 1;
        }
    }
    assert!(pairs >= 16, "{pairs} reranked pairs");

    let err = svc.embed_texts(&[q.clone()], &EmbedOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::WrongKind { kind: ModelKind::MultiVector, .. }), "{err}");
    let err = svc.embed_sparse(&[q], &EmbedOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::WrongKind { .. }), "{err}");
    svc.cleanup().await.unwrap();
    assert_eq!((live_models(), model_threads(), live_weight_bytes()), (0, 0, 0), "after cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_without_token_heads_refuse_embed_multi() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let svc = load("xlm-roberta").await;
    let err = svc.embed_multi(&["x".to_string()], &EmbedOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::WrongKind { kind: ModelKind::Embedding, operation: "embed_multi", .. }), "{err}");
    let err = svc.embed_sparse(&["x".to_string()], &EmbedOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::WrongKind { .. }), "{err}");
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_and_restore_move_the_token_heads_too() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let svc = load(M3).await;
    let texts = vec!["late interaction".to_string(), "a second, longer text to embed token by token".to_string()];
    let opts = EmbedOptions::default();
    let (multi, sparse) = (svc.embed_multi(&texts, &opts).await.unwrap(), svc.embed_sparse(&texts, &opts).await.unwrap());
    let weights = svc.info().unwrap().weight_bytes;
    let moved = svc.offload().await.unwrap();
    // Every weight moves, the two .pt heads included: XLM-R's tensors plus colbert_linear
    // (32 × 32 + 32) and sparse_linear (32 + 1), f32.
    assert_eq!(moved.tensor_bytes, weights, "{moved:?}");
    let heads = (32 * 32 + 32 + 32 + 1) * 4;
    assert!(weights > heads as u64, "{weights}");
    // A request restores the weights; the outputs are bitwise the same.
    assert_eq!(svc.embed_multi(&texts, &opts).await.unwrap(), multi);
    assert_eq!(svc.embed_sparse(&texts, &opts).await.unwrap(), sparse);
    svc.cleanup().await.unwrap();
    assert_eq!((live_models(), model_threads(), live_weight_bytes()), (0, 0, 0), "after cleanup");
}

/// int8 (weight-only, which every CPU runs) applies to the multi-vector kinds as to the
/// embedders: the encoder's linear weights in int8, the token heads as loaded. Each text's token
/// vectors (and BGE-M3's dense vector) stay within the fixture family's int8 bound of f32's,
/// in under half of f32's weight bytes, and a cleanup frees every weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int8_keeps_token_vectors_close_to_f32() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let texts: Vec<String> = (0..10).map(|i| format!("late interaction keeps a vector for token {i} of ").repeat(1 + i % 3)).collect();
    for name in [M3, COLBERT] {
        let spec = |dtype| {
            let options = embed_core::ModelOptions::default().with_dtype(dtype).with_int8_kernel(embed_core::Int8Kernel::WeightOnly);
            let options = if dtype == embed_core::DType::Int8 { options } else { embed_core::ModelOptions::default().with_dtype(dtype) };
            ModelSpec::new(fixture_dir(name).to_string_lossy()).named(name).with_options(options)
        };
        let f32 = DenseEmbeddingService::from_spec(spec(embed_core::DType::F32)).await.unwrap();
        let (want, want_dense) = (f32.embed_multi(&texts, &EmbedOptions::default()).await.unwrap().vectors, f32.embed_texts(&texts, &EmbedOptions::default()).await);
        let f32_bytes = f32.info().unwrap().weight_bytes;
        f32.cleanup().await.unwrap();
        let int8 = DenseEmbeddingService::from_spec(spec(embed_core::DType::Int8)).await.unwrap();
        let info = int8.info().unwrap();
        assert_eq!((info.dtype, info.int8_kernel), (embed_core::DType::Int8, Some(embed_core::Int8Kernel::WeightOnly)), "{name}");
        assert!(info.weight_bytes * 2 < f32_bytes, "{name}: int8 keeps {} of f32's {f32_bytes} weight bytes", info.weight_bytes);
        let got = int8.embed_multi(&texts, &EmbedOptions::default()).await.unwrap().vectors;
        let min = embed_testkit::fixture_int8_min_cosine(name);
        assert_eq!(got.len(), want.len(), "{name}: texts");
        let mut worst = 1.0f64;
        let mut compared = 0;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.len(), w.len(), "{name}: text {i}'s token vectors");
            worst = worst.min(embed_testkit::assert_cosines(&format!("{name} int8, text {i}'s token vectors vs f32"), g, w, min));
            compared += g.len();
        }
        assert!(compared > 0, "{name}: no token vectors compared");
        // BGE-M3 is an embedder too; a PyLate model refuses embed_texts in both precisions.
        match want_dense {
            Ok(dense) => {
                let got_dense = int8.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors;
                embed_testkit::assert_cosines(&format!("{name} int8 dense vs f32"), &got_dense, &dense.vectors, min);
            }
            Err(_) => assert!(int8.embed_texts(&texts, &EmbedOptions::default()).await.is_err(), "{name}: int8 embeds where f32 refused"),
        }
        eprintln!("{name} int8 (weight-only): {compared} token vectors, worst cosine vs f32 {worst:.5}; weights {} of {f32_bytes} bytes", info.weight_bytes);
        int8.cleanup().await.unwrap();
        assert_eq!((live_models(), live_weight_bytes()), (0, 0), "{name}: after cleanup");
    }
}
