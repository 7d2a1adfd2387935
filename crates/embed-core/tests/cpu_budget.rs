//! One CPU thread budget for the whole process: two busy models never run more forward-pass
//! threads at once than the budget allows. (Its own test binary: the budget and its peak are
//! process-wide.)

use std::sync::Arc;
use std::time::Duration;

use embed_core::{cpu_compute_stats, set_cpu_thread_budget, DenseEmbeddingService, EmbedOptions, EmbeddingService, FaultInjection, ModelOptions, ModelSpec};
use embed_testkit::TinyModel;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_busy_models_share_one_thread_budget() {
    set_cpu_thread_budget(1);
    let mut services = Vec::new();
    let mut dirs = Vec::new();
    for seed in [1, 2] {
        let (tmp, dir) = TinyModel { seed, ..Default::default() }.write_temp();
        let options = ModelOptions::default()
            .with_threads(1)
            // Each pass holds its share for at least 20 ms: overlapping passes could not be missed.
            .with_faults(FaultInjection { forward_delay: Some(Duration::from_millis(20)), ..Default::default() })
            .with_max_batch_size(4);
        let svc = DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy()).with_options(options)).await.unwrap();
        services.push(Arc::new(svc));
        dirs.push(tmp);
    }
    let before = cpu_compute_stats();
    let tasks: Vec<_> = services
        .iter()
        .map(|svc| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let texts: Vec<String> = (0..40).map(|i| format!("text number {i}")).collect();
                svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors.len()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 40);
    }
    let after = cpu_compute_stats();
    assert_eq!(after.budget, 1);
    // 40 inputs in batches of 4, two models: 20 passes, each under the budget.
    assert_eq!(after.passes - before.passes, 20, "{after:?}");
    assert_eq!(after.peak, 1, "passes of the two models overlapped: {after:?}");
    assert!(after.waited > before.waited, "the two models never had to take turns: {after:?}");
    assert_eq!(after.in_use, 0);
    for svc in services {
        svc.cleanup().await.unwrap();
    }
}
