//! Many scopes at once: each gets its own model, all are cleaned, nothing is shared by accident.

use std::collections::HashSet;
use std::sync::Arc;

use embed_core::memory::live_models;
use embed_core::{EmbedOptions, EmbeddingService, ModelSpec};
use embed_scoped::scope;
use embed_testkit::{minilm_dir, TinyModel};


/// Runs `n` scopes that all hold their model at the same moment (a barrier inside the body).
async fn run_scopes(spec: ModelSpec, n: usize) -> Vec<(usize, Vec<f32>)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let spec = spec.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                scope(spec, |svc| async move {
                    let out = svc.embed_texts(&[format!("scope number {i}")], &EmbedOptions::default()).await?;
                    barrier.wait().await;
                    // All n models are live here at once (nobody leaves before the second wait).
                    assert!(live_models() >= n, "only {} models live at the barrier", live_models());
                    barrier.wait().await;
                    Ok::<_, embed_core::Error>((Arc::as_ptr(&svc) as usize, out.vectors[0].clone()))
                })
                .await
                .unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_tiny_scopes() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_tmp, dir) = TinyModel::default().write_temp();
    let results = run_scopes(ModelSpec::new(dir.to_string_lossy()), 100).await;
    // All were alive together, so distinct addresses mean distinct services.
    let distinct: HashSet<usize> = results.iter().map(|r| r.0).collect();
    assert_eq!(distinct.len(), 100, "scopes shared a service");
    let unique_vectors: HashSet<Vec<u32>> =
        results.iter().map(|r| r.1.iter().map(|x| x.to_bits()).collect()).collect();
    assert_eq!(unique_vectors.len(), 100, "each scope embedded its own text");
    assert_eq!(live_models(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_minilm_scopes() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let results = run_scopes(ModelSpec::new(minilm_dir().to_string_lossy()), 8).await;
    assert_eq!(results.len(), 8);
    assert!(results.iter().all(|r| r.1.len() == 384));
    assert_eq!(results.iter().map(|r| r.0).collect::<HashSet<_>>().len(), 8, "scopes shared a service");
    assert_eq!(live_models(), 0);
}
