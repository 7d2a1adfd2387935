//! Out-of-memory splitting and worker panics, made to happen for real through
//! `FaultInjection` (an impossible libtorch allocation; a panic inside the worker).

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, Error, FaultInjection, ModelOptions, ModelSpec};
use embed_testkit::TinyModel;

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("the cat {i} and the dog")).collect()
}

async fn service(faults: FaultInjection) -> (tempfile::TempDir, DenseEmbeddingService) {
    let (tmp, dir) = TinyModel::default().write_temp();
    let spec = ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions::default().with_faults(faults));
    (tmp, DenseEmbeddingService::from_spec(spec).await.unwrap())
}

#[tokio::test]
async fn oom_splits_batches_down_to_what_fits() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, clean) = service(FaultInjection::default()).await;
    let input = texts(16);
    let expected = clean.embed_texts(&input, &EmbedOptions::default()).await.unwrap();
    clean.cleanup().await.unwrap();

    // Every input is ~12 tokens: batches above 40 padded tokens "run out of memory".
    let (_tmp, svc) = service(FaultInjection { oom_above_batch_tokens: Some(40), ..Default::default() }).await;
    let got = svc.embed_texts(&input, &EmbedOptions::default()).await.unwrap();
    let stats = svc.batch_stats().unwrap();
    assert!(stats.oom_splits >= 3, "expected splits, got {stats:?}");
    embed_testkit::assert_max_abs_diff("split batches vs one batch", &got.vectors, &expected.vectors, 1e-5);
    svc.cleanup().await.unwrap();
}

#[tokio::test]
async fn oom_on_a_single_input_is_typed_and_service_survives() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, svc) = service(FaultInjection { oom_above_batch_tokens: Some(5), ..Default::default() }).await;
    let err = svc.embed_texts(&texts(4), &EmbedOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { inputs: 1, .. }), "{err}");
    assert!(err.to_string().contains("allocate"), "libtorch's message is kept: {err}");
    // Still usable: a short input fits under the limit.
    let ok = svc.embed_texts(&["a".to_string()], &EmbedOptions::default()).await.unwrap();
    assert_eq!(ok.vectors.len(), 1);
    svc.cleanup().await.unwrap();
}

#[tokio::test]
async fn worker_panic_fails_the_request_not_the_service() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, svc) =
        service(FaultInjection { panic_on_text: Some("boom".into()), ..Default::default() }).await;
    let err = svc
        .embed_texts(&["fine".to_string(), "boom".to_string()], &EmbedOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WorkerPanicked { .. }), "{err}");
    let ok = svc.embed_texts(&["fine".to_string()], &EmbedOptions::default()).await.unwrap();
    assert_eq!(ok.vectors.len(), 1);
    let report = svc.cleanup().await.unwrap();
    assert!(report.model_weight_bytes > 0);
}
