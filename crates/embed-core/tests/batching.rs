//! Dynamic batching: concurrent callers are merged into shared forward passes and each gets
//! exactly its own vectors back.

use std::sync::Arc;

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::TinyModel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_batches_and_get_their_own_results() {
    let (_tmp, dir) = TinyModel::default().write_temp();
    let svc = Arc::new(DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy())).await.unwrap());
    let inputs: Vec<Vec<String>> = (0..48)
        .map(|i| (0..(1 + i % 4)).map(|j| format!("{} the dog {j}", "cat ".repeat(i % 7))).collect())
        .collect();
    // Reference: one request at a time.
    let mut expected = Vec::new();
    for inp in &inputs {
        expected.push(svc.embed_texts(inp, &EmbedOptions::default()).await.unwrap());
    }
    let before = svc.batch_stats().unwrap();
    let tasks: Vec<_> = inputs
        .iter()
        .cloned()
        .map(|inp| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.embed_texts(&inp, &EmbedOptions::default()).await.unwrap() })
        })
        .collect();
    for (t, exp) in tasks.into_iter().zip(&expected) {
        let got = t.await.unwrap();
        assert_eq!(got.token_counts, exp.token_counts);
        embed_testkit::assert_max_abs_diff("batched vs alone", &got.vectors, &exp.vectors, 1e-5);
    }
    let after = svc.batch_stats().unwrap();
    let batches = after.batches - before.batches;
    assert!(batches < inputs.len() as u64, "48 concurrent requests ran in {batches} forward passes: no batching");
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_are_skipped() {
    use embed_core::{FaultInjection, ModelOptions};
    let (_tmp, dir) = TinyModel::default().write_temp();
    let faults = FaultInjection { forward_delay: Some(std::time::Duration::from_millis(1500)), ..Default::default() };
    let spec = ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions { faults, ..Default::default() });
    let svc = Arc::new(DenseEmbeddingService::from_spec(spec).await.unwrap());
    // Occupy the worker with one slow forward pass, queue requests behind it, cancel them.
    let busy = {
        let svc = svc.clone();
        tokio::spawn(async move { svc.embed_texts(&["busy".to_string()], &EmbedOptions::default()).await.unwrap() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(svc.batch_stats().unwrap().queued_requests, 0, "the busy request is being processed");
    let queued: Vec<_> = (0..20)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.embed_texts(&[format!("cancel me {i}")], &EmbedOptions::default()).await })
        })
        .collect();
    // Wait (bounded) until all 20 are queued behind the busy pass, then cancel them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1000);
    while svc.batch_stats().unwrap().queued_requests < 20 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(svc.batch_stats().unwrap().queued_requests, 20);
    for q in &queued {
        q.abort();
    }
    busy.await.unwrap();
    svc.embed_texts(&["after".to_string()], &EmbedOptions::default()).await.unwrap();
    let stats = svc.batch_stats().unwrap();
    assert_eq!(stats.sequences, 2, "cancelled requests were embedded anyway: {stats:?}");
    assert_eq!(stats.queued_requests, 0);
    svc.cleanup().await.unwrap();
}
