//! Continuous batching and priorities: a query that arrives while a large indexing request
//! runs joins at the next batch boundary; bulk work still finishes under an endless stream of
//! queries; interleaving changes no vector; a cancelled request stops its remaining batches.
//!
//! Each forward pass sleeps a few milliseconds first (`FaultInjection::forward_delay`), so the
//! large request is certainly still running when the query arrives, on a machine of any speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, FaultInjection, ModelOptions, ModelSpec, Priority};
use embed_testkit::TinyModel;

const BULK: usize = 10_000;

fn texts(n: usize, tag: &str) -> Vec<String> {
    // Lengths from 1 to 24 words, so that sorting by length reorders every batch.
    (0..n).map(|i| format!("{tag} {i} {}", "word ".repeat(i * 7 % 24))).collect()
}

async fn service(dir: &std::path::Path, delay_ms: u64) -> Arc<DenseEmbeddingService> {
    let options = ModelOptions::default().with_faults(FaultInjection { forward_delay: Some(Duration::from_millis(delay_ms)), ..Default::default() }).with_cpu_prepack(false);
    Arc::new(DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy()).with_options(options)).await.unwrap())
}

/// Waits until the service's bulk request has started its first batch.
async fn bulk_started(svc: &DenseEmbeddingService) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while svc.batch_stats().unwrap().bulk.started_requests == 0 {
        assert!(Instant::now() < deadline, "the bulk request never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_during_a_10000_text_request_finishes_first_and_nothing_changes() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, dir) = TinyModel::default().write_temp();
    let bulk_texts = texts(BULK, "document");
    let query = vec!["what is the capital of france".to_string()];
    // References: each request alone, on a service without delays.
    let alone = DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy())).await.unwrap();
    let bulk_alone = alone.embed_texts(&bulk_texts, &EmbedOptions::default()).await.unwrap();
    let query_alone = alone.embed_texts(&query, &EmbedOptions::default()).await.unwrap();
    alone.cleanup().await.unwrap();

    // 10,000 texts in batches of at most 32 take over 300 passes of at least 2 ms.
    let svc = service(&dir, 2).await;
    let bulk = {
        let (svc, t) = (svc.clone(), bulk_texts.clone());
        tokio::spawn(async move { svc.embed_texts(&t, &EmbedOptions::default()).await.unwrap() })
    };
    bulk_started(&svc).await;
    let got = svc.embed_texts(&query, &EmbedOptions::default()).await.unwrap();
    assert!(!bulk.is_finished(), "the query waited for the whole 10,000-text request");
    let stats = svc.batch_stats().unwrap();
    assert_eq!((stats.interactive.started_requests, stats.bulk.started_requests), (1, 1), "{stats:?}");
    assert!(stats.batches < (BULK / 32) as u64, "the query ran after {} batches: {stats:?}", stats.batches);
    embed_testkit::assert_max_abs_diff("query beside bulk vs alone", &got.vectors, &query_alone.vectors, 1e-5);
    let bulk = bulk.await.unwrap();
    assert_eq!(bulk.vectors.len(), BULK);
    assert_eq!(bulk.token_counts, bulk_alone.token_counts);
    embed_testkit::assert_max_abs_diff("bulk interleaved vs alone", &bulk.vectors, &bulk_alone.vectors, 1e-5);
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_work_finishes_under_an_endless_stream_of_queries() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, dir) = TinyModel::default().write_temp();
    let svc = service(&dir, 2).await;
    let bulk_texts = texts(400, "doc");
    let bulk = {
        let (svc, t) = (svc.clone(), bulk_texts.clone());
        tokio::spawn(async move { svc.embed_texts(&t, &EmbedOptions::default()).await.unwrap() })
    };
    bulk_started(&svc).await;
    // Two clients send queries back to back until the bulk request is done: there is always
    // interactive work queued.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (svc, stop) = (svc.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let q = vec![format!("query {c} {sent}")];
                    let out = svc.embed_texts(&q, &EmbedOptions::default()).await.unwrap();
                    assert_eq!(out.vectors.len(), 1);
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let done = tokio::time::timeout(Duration::from_secs(120), bulk).await.expect("bulk work starved").unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut queries = 0;
    for c in clients {
        queries += c.await.unwrap();
    }
    assert_eq!(done.vectors.len(), bulk_texts.len());
    // 400 texts are at least 13 bulk batches; bulk gets one in every five while queries wait.
    assert!(queries >= 13, "only {queries} queries ran beside the bulk request: the stream was not endless");
    let stats = svc.batch_stats().unwrap();
    assert!(stats.interactive.started_requests >= queries as u64, "{stats:?}");
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_stops_its_remaining_batches() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, dir) = TinyModel::default().write_temp();
    let svc = service(&dir, 5).await;
    let bulk = {
        let (svc, t) = (svc.clone(), texts(BULK, "doc"));
        tokio::spawn(async move { svc.embed_texts(&t, &EmbedOptions::default()).await.unwrap() })
    };
    bulk_started(&svc).await;
    bulk.abort();
    let _ = bulk.await;
    let at_abort = svc.batch_stats().unwrap().batches;
    // Over 300 batches of at least 5 ms were left; wait long enough for a few dozen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = svc.batch_stats().unwrap();
    assert!(after.batches <= at_abort + 2, "{} batches ran after the request was cancelled", after.batches - at_abort);
    assert!(after.batches < 20, "{after:?}");
    // The model still serves.
    let out = svc.embed_texts(&["still here".to_string()], &EmbedOptions::default()).await.unwrap();
    assert_eq!(out.vectors.len(), 1);
    svc.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_priority_wins_over_the_size_default() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, dir) = TinyModel::default().write_temp();
    let svc = service(&dir, 0).await;
    let bulk = EmbedOptions::default().with_priority(Priority::Bulk);
    svc.embed_texts(&["one".to_string()], &bulk).await.unwrap();
    let interactive = EmbedOptions::default().with_priority(Priority::Interactive);
    svc.embed_texts(&texts(50, "many"), &interactive).await.unwrap();
    svc.embed_texts(&texts(Priority::INTERACTIVE_MAX_INPUTS, "few"), &EmbedOptions::default()).await.unwrap();
    svc.embed_texts(&texts(Priority::INTERACTIVE_MAX_INPUTS + 1, "more"), &EmbedOptions::default()).await.unwrap();
    let stats = svc.batch_stats().unwrap();
    assert_eq!((stats.interactive.started_requests, stats.bulk.started_requests), (2, 2), "{stats:?}");
    assert_eq!((stats.interactive.queued_requests, stats.bulk.queued_requests), (0, 0));
    assert_eq!("bulk".parse::<Priority>().unwrap(), Priority::Bulk);
    assert_eq!(" Interactive".parse::<Priority>().unwrap(), Priority::Interactive);
    let err = "urgent".parse::<Priority>().unwrap_err().to_string();
    assert!(err.contains("priority") && err.contains("urgent"), "{err}");
    svc.cleanup().await.unwrap();
}

/// Layer preemption (CPU): a query that arrives while a bulk request's single pass runs is
/// served between that pass's encoder layers, before the pass ends; with it off, the query
/// waits for the whole pass. Each pass sleeps 400 ms before its layers, so the query is
/// certainly queued when the bulk pass reaches its first layer boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_during_one_long_bulk_pass_runs_between_its_layers() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, dir) = TinyModel::default().write_temp();
    let bulk_texts = texts(12, "document");
    let query = vec!["what is the capital of france".to_string()];
    let alone = DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy())).await.unwrap();
    let bulk_alone = alone.embed_texts(&bulk_texts, &EmbedOptions::default()).await.unwrap();
    let query_alone = alone.embed_texts(&query, &EmbedOptions::default()).await.unwrap();
    alone.cleanup().await.unwrap();
    let mut bulk_options = EmbedOptions::default();
    bulk_options.priority = Some(Priority::Bulk);
    for preempt in [true, false] {
        let delay = FaultInjection { forward_delay: Some(Duration::from_millis(400)), ..Default::default() };
        let options = ModelOptions::default().with_faults(delay).with_cpu_prepack(false).with_layer_preemption(preempt);
        let svc = Arc::new(DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy()).with_options(options)).await.unwrap());
        let bulk = {
            let (svc, t, o) = (svc.clone(), bulk_texts.clone(), bulk_options.clone());
            tokio::spawn(async move { svc.embed_texts(&t, &o).await.unwrap() })
        };
        bulk_started(&svc).await;
        let got = svc.embed_texts(&query, &EmbedOptions::default()).await.unwrap();
        let stats = svc.batch_stats().unwrap();
        if preempt {
            // Run from inside the bulk pass, which was still running when the query was answered.
            assert_eq!(stats.preempting_batches, 1, "{stats:?}");
        } else {
            assert_eq!(stats.preempting_batches, 0, "{stats:?}");
            // The bulk pass was answered first, 400 ms before the query's own pass ended.
            assert!(bulk.is_finished(), "without preemption the query waits for the whole bulk pass");
        }
        let bulk = bulk.await.unwrap();
        let stats = svc.batch_stats().unwrap();
        assert_eq!(stats.batches, 2, "one bulk pass (12 short texts fit one batch) and the query's: {stats:?}");
        // BERT's post-norm layers: a point before each layer and two inside it, on the bulk
        // pass only (the query's pass, run from a point, meets none).
        let points = if preempt { 3 * TinyModel::default().layers as u64 } else { 0 };
        assert_eq!(stats.preemption_points, points, "{stats:?}");
        // Each pass sleeps 400 ms before its layers; the bulk pass's compute time leaves out the
        // query's detour (400 ms and more) when the query ran inside it.
        assert!(stats.interactive.compute_us >= 400_000 && stats.bulk.compute_us >= 400_000, "{stats:?}");
        assert!(stats.bulk.compute_us < 750_000, "the detour counted as bulk: {stats:?}");
        embed_testkit::assert_max_abs_diff("query between layers vs alone", &got.vectors, &query_alone.vectors, 1e-5);
        embed_testkit::assert_max_abs_diff("preempted bulk pass vs alone", &bulk.vectors, &bulk_alone.vectors, 1e-5);
        svc.cleanup().await.unwrap();
    }
}

/// CUDA fairness between models on one device: model A's 10,000-text bulk load (passes of at
/// least 20 ms each, over 6 s in all) cannot hold model B's query behind its backlog; B's pass
/// waits for at most the two batches A has in flight (`runtime::gate::cuda_gate`). The ordering
/// rules themselves are unit-tested on the CPU (`runtime::gate::tests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CUDA: cargo test -p embed-core --test it -- --ignored scheduling::cuda_ on a GPU machine"]
async fn cuda_one_models_bulk_load_does_not_hold_another_models_query() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, dir) = TinyModel::default().write_temp();
    let load = |delay_ms: u64| {
        let delay = FaultInjection { forward_delay: Some(Duration::from_millis(delay_ms)), ..Default::default() };
        let options = ModelOptions::default().with_device(embed_core::DeviceSpec::Cuda(0)).with_faults(delay);
        DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy()).with_options(options))
    };
    let bulk_svc = Arc::new(load(20).await.unwrap());
    let query_svc = load(0).await.unwrap();
    let query = vec!["what is the capital of france".to_string()];
    let query_alone = query_svc.embed_texts(&query, &EmbedOptions::default()).await.unwrap();
    let bulk = {
        let (svc, t) = (bulk_svc.clone(), texts(BULK, "document"));
        tokio::spawn(async move { svc.embed_texts(&t, &EmbedOptions::default()).await.unwrap() })
    };
    bulk_started(&bulk_svc).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let got = query_svc.embed_texts(&query, &EmbedOptions::default()).await.unwrap();
    let waited = t0.elapsed();
    assert!(!bulk.is_finished(), "the query waited for the other model's whole bulk request");
    assert!(waited < Duration::from_secs(1), "the query took {waited:?} behind the other model's bulk load");
    embed_testkit::assert_max_abs_diff("query beside another model's bulk vs alone", &got.vectors, &query_alone.vectors, 1e-5);
    assert_eq!(bulk.await.unwrap().vectors.len(), BULK);
    bulk_svc.cleanup().await.unwrap();
    query_svc.cleanup().await.unwrap();
}

/// Every family's bulk pass offers three preemption points per layer on the CPU: before it,
/// after its attention half, and between its feed-forward's two projections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_passes_of_every_family_offer_three_points_per_layer() {
    let _gate = embed_testkit::module_gate(module_path!());
    let mut bulk = EmbedOptions::default();
    bulk.priority = Some(Priority::Bulk);
    let families = ["bert", "distilbert", "gte", "nomic-bert", "mpnet", "modernbert", "qwen3", "mistral", "gemma3"];
    for name in families {
        let dir = embed_testkit::fixture_dir(name);
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let layers = ["num_hidden_layers", "n_layers", "n_layer"].iter().find_map(|k| config[*k].as_u64()).unwrap_or_else(|| panic!("{name}: no layer count"));
        let svc = DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy())).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = svc.embed_texts(&texts(12, name), &bulk).await.unwrap();
        assert_eq!(out.vectors.len(), 12, "{name}");
        let stats = svc.batch_stats().unwrap();
        assert!(stats.batches >= 1, "{name}: {stats:?}");
        assert_eq!(stats.preemption_points, 3 * layers * stats.batches, "{name} ({layers} layers): {stats:?}");
        svc.cleanup().await.unwrap();
    }
}
