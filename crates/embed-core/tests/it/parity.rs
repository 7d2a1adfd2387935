//! Parity with sentence-transformers on the real all-MiniLM-L6-v2 (f32, CPU), and batch
//! invariance. Reference: testdata/minilm-l6-v2.json (sentence-transformers 6.2.0, torch 2.11.0).

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::{assert_cosines, max_abs_diff, minilm_dir, reference};

async fn minilm() -> DenseEmbeddingService {
    DenseEmbeddingService::from_spec(ModelSpec::new(minilm_dir().to_string_lossy())).await.expect("load MiniLM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_sentence_transformers_f32() {
    let _gate = embed_testkit::module_gate(module_path!());
    let svc = minilm().await;
    let info = svc.info().unwrap();
    assert_eq!((info.dimension, info.max_seq_length, info.normalize), (384, 256, true));
    let items = reference();
    assert!(items.len() >= 30);
    let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let out = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
    let expected: Vec<Vec<f32>> = items.iter().map(|i| i.embedding.clone()).collect();
    let worst = assert_cosines("f32 vs sentence-transformers", &out.vectors, &expected, 0.99999);
    let counts: Vec<usize> = items.iter().map(|i| i.token_count).collect();
    assert_eq!(out.token_counts, counts, "token counts");
    eprintln!("worst cosine to sentence-transformers: {worst:.8}");
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_invariance() {
    let _gate = embed_testkit::module_gate(module_path!());
    let svc = minilm().await;
    let texts: Vec<String> = reference().into_iter().map(|i| i.text).collect();
    let together = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
    assert_eq!(together.vectors.len(), texts.len());
    for (i, t) in texts.iter().enumerate().step_by(3) {
        let alone = svc.embed_texts(std::slice::from_ref(t), &EmbedOptions::default()).await.unwrap();
        assert_eq!(alone.vectors.len(), 1);
        let d = max_abs_diff(&alone.vectors[0], &together.vectors[i]);
        assert!(d <= 1e-5, "text {i}: alone vs in a mixed batch differ by {d}");
    }
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bf16_stays_close_to_reference() {
    let _gate = embed_testkit::module_gate(module_path!());
    let spec = ModelSpec::new(minilm_dir().to_string_lossy())
        .with_options(embed_core::ModelOptions::default().with_dtype(embed_core::DType::Bf16));
    let svc = DenseEmbeddingService::from_spec(spec).await.unwrap();
    let items = reference();
    let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let out = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
    let expected: Vec<Vec<f32>> = items.iter().map(|i| i.embedding.clone()).collect();
    // Each item against the threshold: a NaN (the realistic half-precision failure) fails.
    let worst = assert_cosines("bf16 vs sentence-transformers", &out.vectors, &expected, 0.9995);
    eprintln!("bf16 worst cosine: {worst:.6}");
    svc.cleanup().await.unwrap();
}
