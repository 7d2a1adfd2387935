//! Dynamic batching: concurrent callers are merged into shared forward passes and each gets
//! exactly its own vectors back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec, Offload};
use embed_testkit::TinyModel;

/// While the worker is busy with one slow forward pass, 48 requests (120 inputs) queue behind
/// it; its next round takes all of them, in exactly ceil(120 / 64) forward passes of at most 64
/// inputs, and each caller gets its own vectors back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_batches_and_get_their_own_results() {
    let _gate = embed_testkit::module_gate(module_path!());
    use embed_core::{FaultInjection, ModelOptions};
    const MAX_BATCH: usize = 64;
    let (_tmp, dir) = TinyModel::default().write_temp();
    let inputs: Vec<Vec<String>> = (0..48)
        .map(|i| (0..(1 + i % 4)).map(|j| format!("{} the dog {j}", "cat ".repeat(i % 7))).collect())
        .collect();
    let sequences: usize = inputs.iter().map(Vec::len).sum();
    assert_eq!(sequences, 120);
    // Reference: one request at a time, on a service of its own (the same weights, no delay).
    let alone = DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy())).await.unwrap();
    let mut expected = Vec::new();
    for inp in &inputs {
        expected.push(alone.embed_texts(inp, &EmbedOptions::default()).await.unwrap());
    }
    alone.cleanup().await.unwrap();

    let faults = FaultInjection { forward_delay: Some(Duration::from_millis(1500)), ..Default::default() };
    let options = ModelOptions::default().with_faults(faults).with_max_batch_size(MAX_BATCH).with_max_batch_tokens(1 << 20).with_cpu_prepack(false);
    let svc = Arc::new(DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy()).with_options(options)).await.unwrap());
    // Occupy the worker. The model is offloaded first, so the busy request's round starts with a
    // restore the counters show (`auto_restores`): from then on the worker sleeps in its pass,
    // and whatever arrives queues for the next round.
    svc.offload().await.unwrap();
    let before = svc.batch_stats().unwrap();
    let busy = {
        let svc = svc.clone();
        tokio::spawn(async move { svc.embed_texts(&["busy".to_string()], &EmbedOptions::default()).await.unwrap() })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while svc.batch_stats().unwrap().auto_restores == before.auto_restores {
        assert!(Instant::now() < deadline, "the busy request never reached the worker");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tasks: Vec<_> = inputs
        .iter()
        .cloned()
        .map(|inp| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.embed_texts(&inp, &EmbedOptions::default()).await.unwrap() })
        })
        .collect();
    // Queueing 48 small requests takes milliseconds; the busy pass lasts 1.5 s.
    while svc.batch_stats().unwrap().queued_requests < inputs.len() && !busy.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = svc.batch_stats().unwrap().queued_requests;
    assert_eq!(queued, inputs.len(), "only {queued} of the requests queued behind the busy pass");
    busy.await.unwrap();
    for (t, exp) in tasks.into_iter().zip(&expected) {
        let got = t.await.unwrap();
        assert_eq!(got.token_counts, exp.token_counts);
        embed_testkit::assert_max_abs_diff("batched vs alone", &got.vectors, &exp.vectors, 1e-5);
    }
    let stats = svc.batch_stats().unwrap();
    let merged = sequences.div_ceil(MAX_BATCH) as u64;
    assert_eq!(
        (stats.batches - before.batches, stats.sequences - before.sequences, stats.auto_restores - before.auto_restores),
        (1 + merged, 1 + sequences as u64, 1),
        "the busy pass, then the 48 queued requests in {merged} passes of at most {MAX_BATCH} inputs: {stats:?}"
    );
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_are_skipped() {
    let _gate = embed_testkit::module_gate(module_path!());
    use embed_core::{FaultInjection, ModelOptions};
    let (_tmp, dir) = TinyModel::default().write_temp();
    let faults = FaultInjection { forward_delay: Some(std::time::Duration::from_millis(1500)), ..Default::default() };
    let spec = ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions::default().with_faults(faults));
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
