//! Real weights beyond the default model, against sentence-transformers' own embeddings of the
//! reference texts (`python/make_reference.py --model NAME`).
//!
//! Gated: these need `cargo xtask setup --model all-mpnet-base-v2` (~404 MB, not part of the
//! default setup), so they are `#[ignore]`d and run with
//! `cargo test -p embed-core --test real_models -- --ignored`; run that way without the model
//! they fail and say how to install it.

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, Family, ModelSpec};
use embed_testkit::{assert_cosines, real_model_dir, reference_file, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs `cargo xtask setup --model all-mpnet-base-v2`; run with --ignored"]
async fn all_mpnet_base_v2_matches_sentence_transformers() {
    let dir = real_model_dir("all-mpnet-base-v2");
    let items = reference_file(&workspace_root().join("testdata/all-mpnet-base-v2.json"));
    let svc = DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy())).await.unwrap();
    let info = svc.info().unwrap();
    assert_eq!((info.family, info.architecture.as_str()), (Family::MPNet, "mpnet"));
    assert_eq!((info.dimension, info.max_seq_length, info.normalize), (768, 384, true));
    let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let out = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
    let counts: Vec<usize> = items.iter().map(|i| i.token_count).collect();
    assert_eq!(out.token_counts, counts, "token counts");
    let expected: Vec<Vec<f32>> = items.iter().map(|i| i.embedding.clone()).collect();
    let worst = assert_cosines("all-mpnet-base-v2 f32 vs sentence-transformers", &out.vectors, &expected, 0.99999);
    eprintln!("all-mpnet-base-v2: worst cosine to sentence-transformers {worst:.8} over {} texts", texts.len());
    svc.cleanup().await.unwrap();
}
