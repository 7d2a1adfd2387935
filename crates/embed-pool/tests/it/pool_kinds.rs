//! A sentence embedder, a cross-encoder, a SPLADE encoder and a multi-vector (ColBERT) model in one pool: each lease does its
//! model's work and refuses the others', the pool status tells them apart, eviction between
//! them frees each one's weights exactly, and closing the pool leaves nothing live.

use embed_core::memory::{live_models, live_weight_bytes};
use embed_core::{EmbedOptions, Error, ModelKind, ModelSpec};
use embed_pool::{ModelRegistry, Pool, PoolConfig};
use embed_testkit::{fixture_dir, serial};

fn registry() -> ModelRegistry {
    let spec = |name: &str| ModelSpec::new(fixture_dir(name).to_string_lossy());
    ModelRegistry::new().with("dense", spec("bert")).with("reranker", spec("bert-reranker")).with("sparse", spec("bert-splade"))
        .with("multi", spec("bert-colbert"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_kinds_share_a_pool_and_leave_nothing_behind() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let pool = Pool::new(PoolConfig::default().with_max_models(3), registry());
    let texts = vec!["a passage about memory".to_string(), "another passage about models".to_string()];
    let opts = EmbedOptions::default();

    let dense = pool.get("dense").await.unwrap();
    assert_eq!(dense.embed_texts(&texts, &opts).await.unwrap().vectors.len(), 2);
    let reranker = pool.get("reranker").await.unwrap();
    assert_eq!(reranker.tasks_for("rerank").unwrap().rerank("memory", &texts, &opts).await.unwrap().logits.len(), 2);
    let sparse = pool.get("sparse").await.unwrap();
    assert!(sparse.tasks_for("embed_sparse").unwrap().embed_sparse(&texts, &opts).await.unwrap().vectors.iter().all(|v| !v.indices.is_empty()));
    assert!(matches!(reranker.embed_texts(&texts, &opts).await, Err(Error::WrongKind { kind: ModelKind::Reranker, .. })));
    assert!(matches!(dense.tasks_for("rerank").unwrap().rerank("q", &texts, &opts).await, Err(Error::WrongKind { kind: ModelKind::Embedding, .. })));

    let bytes: u64 = [&dense, &reranker, &sparse].iter().map(|l| l.info().unwrap().weight_bytes).sum();
    assert_eq!((live_models(), live_weight_bytes()), (3, bytes));
    // The pool's status tells the kinds apart (least recently used first).
    let kinds: Vec<(String, Option<ModelKind>)> = pool.status().models.into_iter().map(|m| (m.name, m.kind)).collect();
    let expected = [("dense", ModelKind::Embedding), ("reranker", ModelKind::Reranker), ("sparse", ModelKind::Sparse)];
    assert_eq!(kinds, expected.map(|(n, k)| (n.to_string(), Some(k))).to_vec());
    drop((dense, reranker, sparse));
    pool.close().await;
    assert_eq!((live_models(), live_weight_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_slot_pool_swaps_between_kinds_and_frees_each() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let pool = Pool::new(PoolConfig::default().with_max_models(1), registry());
    let texts = vec!["swap me".to_string()];
    let opts = EmbedOptions::default();
    for round in 0..3 {
        for name in ["dense", "reranker", "sparse", "multi"] {
            let lease = pool.get(name).await.unwrap();
            let info = lease.info().unwrap();
            match info.kind {
                ModelKind::Embedding => drop(lease.embed_texts(&texts, &opts).await.unwrap()),
                ModelKind::Reranker => drop(lease.tasks_for("rerank").unwrap().rerank("q", &texts, &opts).await.unwrap()),
                ModelKind::Sparse => drop(lease.tasks_for("embed_sparse").unwrap().embed_sparse(&texts, &opts).await.unwrap()),
                ModelKind::MultiVector => drop(lease.tasks_for("embed_multi").unwrap().embed_multi(&texts, &opts).await.unwrap()),
                ModelKind::Classifier => unreachable!(),
            }
            // Only this model is live: the one before it was evicted and freed to the byte.
            assert_eq!((live_models(), live_weight_bytes()), (1, info.weight_bytes), "round {round}: {name}");
        }
    }
    // Four kinds, three rounds: every get but the first evicts the one before it.
    assert_eq!(pool.stats().evictions.capacity, 11);
    pool.close().await;
    assert_eq!((live_models(), live_weight_bytes()), (0, 0));
}
