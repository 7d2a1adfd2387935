//! Cross-encoders, a classifier and a SPLADE encoder against their references
//! (`testdata/fixtures/{bert-reranker,xlm-roberta-reranker,bert-classifier,bert-splade}`,
//! written by `python/make_task_fixtures.py` with sentence-transformers' CrossEncoder and
//! SparseEncoder): logits within 1e-4, the same non-zero SPLADE entries with values within
//! 1e-4, token counts and truncation as the reference; each model refuses the others' work
//! with a typed error, and every weight byte is freed on cleanup.

use embed_core::memory::{live_models, live_weight_bytes};
use embed_core::{ClassifyInput, DenseEmbeddingService, EmbedOptions, EmbeddingService, Error, ModelKind, ModelSpec, RetrievalTasks};
use embed_testkit::{assert_max_abs_diff, fixture_dir, fixture_reference, max_abs_diff, serial, task_reference, TaskItem};

async fn load(name: &str) -> DenseEmbeddingService {
    DenseEmbeddingService::from_spec(ModelSpec::new(fixture_dir(name).to_string_lossy()).named(name))
        .await
        .unwrap_or_else(|e| panic!("{name}: load failed: {e}"))
}

/// The reference rows of `items` (logits of a cross-encoder or classifier).
fn reference_logits(items: &[&TaskItem]) -> Vec<Vec<f32>> {
    items.iter().map(|i| i.logits.clone()).collect()
}

/// The reference items grouped by query, in first-seen order (one rerank call per query).
fn by_query(items: &[TaskItem]) -> Vec<(String, Vec<&TaskItem>)> {
    let mut groups: Vec<(String, Vec<&TaskItem>)> = Vec::new();
    for it in items {
        let q = it.query.clone().expect("reranker items have a query");
        match groups.iter_mut().find(|(g, _)| *g == q) {
            Some((_, v)) => v.push(it),
            None => groups.push((q, vec![it])),
        }
    }
    groups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerankers_match_cross_encoder_logits() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    for name in ["bert-reranker", "xlm-roberta-reranker"] {
        let svc = load(name).await;
        let info = svc.info().unwrap();
        assert_eq!((info.kind, info.dimension, info.labels.len(), info.normalize), (ModelKind::Reranker, 1, 1, false), "{name}");
        // Every tensor of the checkpoint is loaded once: encoder, pooler or classifier.dense, classifier.
        let file = fixture_dir(name).join("model.safetensors");
        assert_eq!(info.weight_bytes, embed_testkit::safetensors_bytes(&file, 4, |_| true), "{name}: weight bytes");
        let items = task_reference(name);
        assert!(items.iter().filter(|i| i.truncated).count() >= 2, "{name}: the reference truncates some passages");
        assert!(items.iter().all(|i| i.logits.len() == 1), "{name}: one reference logit per pair");
        // The largest difference seen; NaN-propagating, so a NaN logit cannot hide behind it.
        let mut worst = 0.0f32;
        let mut pairs_checked = 0;
        for (query, group) in by_query(&items) {
            let texts: Vec<String> = group.iter().map(|i| i.text.clone()).collect();
            let out = svc.rerank(&query, &texts, &EmbedOptions::default()).await.unwrap();
            let n = group.len();
            let lens = (out.logits.len(), out.token_counts.len(), out.truncated.len());
            assert_eq!(lens, (n, n, n), "{name}: {query:?}: (logits, token counts, truncation flags) for {n} pairs");
            // Lengths, then every logit within 1e-4; a NaN fails.
            let d = assert_max_abs_diff(&format!("{name}: {query:?} logits vs CrossEncoder"), &out.logits, &reference_logits(&group), 1e-4);
            worst = if d.is_nan() || d > worst { d } else { worst };
            let counts: Vec<usize> = group.iter().map(|i| i.token_count).collect();
            assert_eq!(out.token_counts, counts, "{name}: {query:?}: token counts");
            let truncated: Vec<bool> = group.iter().map(|i| i.truncated).collect();
            assert_eq!(out.truncated, truncated, "{name}: {query:?}: truncation");
            // The score is the sigmoid of the logit, as CrossEncoder.predict gives by default
            // (written so that a NaN score or logit fails).
            let scores = out.scores();
            assert_eq!(scores.len(), n, "{name}: one score per pair");
            for (s, l) in scores.iter().zip(&out.logits) {
                let d = (s[0] - 1.0 / (1.0 + (-l[0]).exp())).abs();
                assert!(d < 1e-6, "{name}: score {s:?} of logit {l:?}");
            }
            pairs_checked += n;
        }
        assert_eq!(pairs_checked, items.len(), "{name}: every reference pair reranked");
        assert!(worst <= 1e-4, "{name}: worst logit difference {worst}");
        // All pairs in one classify call: batched with padding, same logits, one row per pair.
        let pairs: Vec<ClassifyInput> = items.iter().map(|i| ClassifyInput::Pair(i.query.clone().unwrap(), i.text.clone())).collect();
        let all = svc.classify(&pairs, &EmbedOptions::default()).await.unwrap();
        let all_items: Vec<&TaskItem> = items.iter().collect();
        assert_max_abs_diff(&format!("{name}: batched classify logits vs CrossEncoder"), &all.logits, &reference_logits(&all_items), 1e-4);
        eprintln!("{name}: {} pairs, worst logit difference {worst:.2e}", items.len());
        svc.cleanup().await.unwrap();
    }
    assert_eq!((live_models(), live_weight_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_over_the_limit_is_refused_without_truncation() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let svc = load("bert-reranker").await;
    let long = task_reference("bert-reranker").into_iter().find(|i| i.truncated).expect("a truncated pair");
    let no_truncation = EmbedOptions::default().with_truncate(false);
    let err = svc.rerank(long.query.as_deref().unwrap(), std::slice::from_ref(&long.text), &no_truncation).await.unwrap_err();
    assert!(matches!(err, Error::InputTooLong { index: 0, limit: 64, .. }), "{err}");
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classifier_gives_its_logits_and_labels() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let svc = load("bert-classifier").await;
    let info = svc.info().unwrap();
    assert_eq!(info.kind, ModelKind::Classifier);
    assert_eq!(info.labels, vec!["negative", "neutral", "positive"]);
    let items = task_reference("bert-classifier");
    let inputs: Vec<ClassifyInput> = items.iter().map(|i| ClassifyInput::Text(i.text.clone())).collect();
    assert!(!items.is_empty() && items.iter().all(|i| i.logits.len() == 3), "one reference logit per label");
    let out = svc.classify(&inputs, &EmbedOptions::default()).await.unwrap();
    // One row per input (lengths checked), every logit within 1e-4; a NaN fails.
    let all_items: Vec<&TaskItem> = items.iter().collect();
    let worst = assert_max_abs_diff("classifier logits vs the reference", &out.logits, &reference_logits(&all_items), 1e-4);
    let counts: Vec<usize> = items.iter().map(|i| i.token_count).collect();
    assert_eq!(out.token_counts, counts, "token counts");
    let scores = out.scores();
    assert_eq!(scores.len(), items.len(), "one score row per input");
    for s in &scores {
        // A NaN sum fails (`<` is false for NaN).
        assert!(s.len() == 3 && (s.iter().sum::<f32>() - 1.0).abs() < 1e-5, "softmax over the labels: {s:?}");
    }
    eprintln!("bert-classifier: {} texts, worst logit difference {worst:.2e}", items.len());
    // A classifier does not rerank: that needs a one-label cross-encoder.
    let err = svc.rerank("q", &["t".to_string()], &EmbedOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::WrongKind { kind: ModelKind::Classifier, operation: "rerank", .. }), "{err}");
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splade_matches_sparse_encoder() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let svc = load("bert-splade").await;
    let info = svc.info().unwrap();
    assert_eq!((info.kind, info.dimension), (ModelKind::Sparse, info.vocab_size));
    // The tied decoder shares the word embeddings: the file's tensors, counted once.
    let file = fixture_dir("bert-splade").join("model.safetensors");
    assert_eq!(info.weight_bytes, embed_testkit::safetensors_bytes(&file, 4, |_| true), "weight bytes");
    let items = task_reference("bert-splade");
    let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let out = svc.embed_sparse(&texts, &EmbedOptions::default()).await.unwrap();
    let n = items.len();
    assert!(n > 0, "the SPLADE reference has items");
    assert_eq!((out.vectors.len(), out.token_counts.len(), out.truncated.len()), (n, n, n), "(vectors, token counts, truncation flags) for {n} texts");
    // NaN-propagating: a NaN value makes `worst` NaN, and NaN fails `worst <= 1e-4` below.
    let mut worst = 0.0f32;
    for (got, it) in out.vectors.iter().zip(&items) {
        assert!(!it.indices.is_empty(), "{:?}: the reference has non-zero entries", it.text);
        assert_eq!(got.indices, it.indices, "{:?}: non-zero entries", it.text);
        let d = max_abs_diff(&got.values, &it.values);
        worst = if d.is_nan() || d > worst { d } else { worst };
    }
    let counts: Vec<usize> = items.iter().map(|i| i.token_count).collect();
    assert_eq!(out.token_counts, counts, "token counts");
    assert!(worst <= 1e-4, "worst SPLADE value difference {worst}");
    assert!(out.truncated.iter().filter(|t| **t).count() >= 2, "the long texts are truncated");
    eprintln!("bert-splade: {} texts, worst value difference {worst:.2e}", items.len());
    svc.cleanup().await.unwrap();
    assert_eq!((live_models(), live_weight_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_refuses_the_others_work() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let texts = vec!["a short text".to_string()];
    let opts = EmbedOptions::default();
    let embedder = load("bert").await;
    let reranker = load("bert-reranker").await;
    let sparse = load("bert-splade").await;
    let kind_of = |e: Error| match e {
        Error::WrongKind { kind, operation, .. } => (kind, operation),
        other => panic!("expected WrongKind, got {other}"),
    };
    assert_eq!(kind_of(embedder.rerank("q", &texts, &opts).await.unwrap_err()), (ModelKind::Embedding, "rerank"));
    assert_eq!(kind_of(embedder.embed_sparse(&texts, &opts).await.unwrap_err()), (ModelKind::Embedding, "embed_sparse"));
    assert_eq!(kind_of(embedder.classify(&[ClassifyInput::Text("x".into())], &opts).await.unwrap_err()), (ModelKind::Embedding, "classify"));
    assert_eq!(kind_of(reranker.embed_texts(&texts, &opts).await.unwrap_err()), (ModelKind::Reranker, "embed"));
    assert_eq!(kind_of(reranker.embed_sparse(&texts, &opts).await.unwrap_err()), (ModelKind::Reranker, "embed_sparse"));
    assert_eq!(kind_of(reranker.embed_tokens(&texts, &opts).await.unwrap_err()), (ModelKind::Reranker, "embed_tokens"));
    assert_eq!(kind_of(sparse.embed_texts(&texts, &opts).await.unwrap_err()), (ModelKind::Sparse, "embed"));
    assert_eq!(kind_of(sparse.rerank("q", &texts, &opts).await.unwrap_err()), (ModelKind::Sparse, "rerank"));
    let msg = reranker.embed_texts(&texts, &opts).await.unwrap_err().to_string();
    assert!(msg.contains("bert-reranker") && msg.contains("reranker") && msg.contains("rerank"), "{msg}");
    for svc in [embedder, reranker, sparse] {
        svc.cleanup().await.unwrap();
    }
    assert_eq!((live_models(), live_weight_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_vectors_are_the_states_pooling_sees() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    // The bert fixture pools the [CLS] token and normalises: its first token vector, normalised,
    // is the sentence embedding.
    let svc = load("bert").await;
    let items = fixture_reference("bert");
    let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let out = svc.embed_tokens(&texts, &EmbedOptions::default()).await.unwrap();
    let hidden = svc.info().unwrap().dimension;
    assert!(!items.is_empty(), "the bert reference has items");
    assert_eq!(out.vectors.len(), items.len(), "one token-vector list per text");
    for (tokens, it) in out.vectors.iter().zip(&items) {
        assert_eq!(tokens.len(), it.token_count, "{:?}: one vector per token", it.text);
        assert!(tokens.iter().all(|t| t.len() == hidden));
        let first = &tokens[0];
        let norm = first.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cls: Vec<f32> = first.iter().map(|x| x / norm).collect();
        assert!(embed_testkit::cosine(&cls, &it.embedding) >= 0.99999, "{:?}", it.text);
    }
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_inverts_tokenize() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let svc = load("bert-reranker").await;
    let text = "the model and the search".to_string();
    let ids = svc.tokenize(std::slice::from_ref(&text), &EmbedOptions::default()).await.unwrap().remove(0).ids;
    let plain = svc.decode(std::slice::from_ref(&ids), true).await.unwrap().remove(0);
    let with_specials = svc.decode(&[ids], false).await.unwrap().remove(0);
    assert!(!plain.contains("[CLS]") && with_specials.starts_with("[CLS]"), "{plain:?} / {with_specials:?}");
    assert_eq!(plain.replace(' ', ""), text.replace(' ', "").to_lowercase().replace("[unk]", ""), "round trip");
    let vocab = svc.info().unwrap().vocab_size as u32;
    let err = svc.decode(&[vec![1, vocab]], true).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTokens { index: 0, .. }), "{err}");
    svc.cleanup().await.unwrap();
}

/// The vocabulary of a fixture's `tokenizer.json`, by id, read from the file itself (its
/// `model.vocab` map and its `added_tokens`), not through the tokenizers crate.
fn vocabulary_by_id(name: &str) -> std::collections::BTreeMap<u32, String> {
    let text = std::fs::read_to_string(fixture_dir(name).join("tokenizer.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let vocab = json["model"]["vocab"].as_object().expect("a WordPiece vocabulary map");
    let mut by_id: std::collections::BTreeMap<u32, String> = vocab.iter().map(|(t, id)| (id.as_u64().unwrap() as u32, t.clone())).collect();
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        by_id.insert(added["id"].as_u64().unwrap() as u32, added["content"].as_str().unwrap().to_string());
    }
    by_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splade_indices_name_their_vocabulary_tokens() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let svc = load("bert-splade").await;
    let vocab = vocabulary_by_id("bert-splade");
    let info = svc.info().unwrap();
    assert_eq!(vocab.len(), info.vocab_size, "the fixture's tokenizer covers the model's vocabulary");
    let texts: Vec<String> = task_reference("bert-splade").iter().take(3).map(|i| i.text.clone()).collect();
    let out = svc.embed_sparse(&texts, &EmbedOptions::default()).await.unwrap();
    let mut checked = 0;
    for v in &out.vectors {
        let tokens = svc.vocab_tokens(&v.indices).await.unwrap();
        assert_eq!(tokens.len(), v.indices.len(), "one token per index");
        for (id, token) in v.indices.iter().zip(&tokens) {
            assert_eq!(Some(token), vocab.get(id), "token of id {id}");
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} entries checked");
    // Word pieces keep their continuation marker, as SparseEncoder.decode gives them.
    let piece = vocab.iter().find(|(_, t)| t.starts_with("##")).expect("the fixture's vocabulary has word pieces");
    assert_eq!(svc.vocab_tokens(&[*piece.0]).await.unwrap(), vec![piece.1.clone()]);
    let outside = info.vocab_size as u32;
    let err = svc.vocab_tokens(&[3, outside]).await.unwrap_err();
    assert!(matches!(&err, Error::InvalidTokens { reason, .. } if reason.contains(&outside.to_string())), "{err}");
    assert_eq!(svc.vocab_tokens(&[]).await.unwrap(), Vec::<String>::new());
    svc.cleanup().await.unwrap();
    let err = svc.vocab_tokens(&[3]).await.unwrap_err();
    assert!(matches!(err, Error::NotReady { .. }), "{err}");
}

/// The service surface is capabilities, not methods that fail: a service that only embeds (the
/// testkit's fake) offers no [`RetrievalTasks`], and a generic caller asking for them gets a
/// typed error naming the operation; the libtorch service offers both capabilities, the fake
/// only offloading.
#[test]
fn services_say_what_they_offer_through_capabilities() {
    let _gate = embed_testkit::module_gate(module_path!());
    let fake: std::sync::Arc<dyn EmbeddingService> = std::sync::Arc::new(embed_testkit::FakeService::new(8));
    assert!(fake.tasks().is_none(), "the fake only embeds");
    match fake.tasks_for("rerank") {
        Err(e @ Error::InvalidOption { name: "operation", .. }) => assert!(e.to_string().contains("rerank"), "{e}"),
        Err(other) => panic!("expected InvalidOption naming the operation, got {other:?}"),
        Ok(_) => panic!("the fake must not offer retrieval tasks"),
    }
    assert!(fake.offload_for("offload").is_ok(), "the fake offloads (the pool's warm-tier tests use it)");
    let dense: std::sync::Arc<dyn EmbeddingService> = std::sync::Arc::new(DenseEmbeddingService::new());
    assert!(dense.tasks().is_some() && dense.offloading().is_some());
    // Unloaded, the capability is there and the call says why it cannot run.
    let unloaded = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(dense.tasks_for("rerank").unwrap().rerank("q", &["d".to_string()], &EmbedOptions::default()));
    assert!(matches!(unloaded, Err(Error::NotReady { .. })), "{unloaded:?}");
}
