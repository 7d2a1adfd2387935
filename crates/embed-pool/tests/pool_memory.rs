//! Swapping a real model in and out of a one-slot pool does not grow the process: every
//! eviction gives all of the model's memory back before the next load.

use std::time::Duration;

use embed_core::memory::{live_models, live_weight_bytes};
use embed_core::{EmbedOptions, ModelSpec};
use embed_pool::{ModelRegistry, Pool, PoolConfig};
use embed_testkit::memory::{growth, mib, settled_snapshot};
use embed_testkit::{minilm_dir, TinyModel};

const CYCLES: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_eviction_cycles_keep_resident_memory_flat() {
    let (_tmp, tiny_dir) = TinyModel::default().write_temp();
    let registry = ModelRegistry::new()
        .with("minilm", ModelSpec::new(minilm_dir().to_string_lossy()))
        .with("tiny", ModelSpec::new(tiny_dir.to_string_lossy()));
    let pool = Pool::new(PoolConfig::default().with_max_models(1), registry);
    let texts: Vec<String> = (0..16).map(|i| format!("sentence number {i} about memory and models")).collect();
    let before = settled_snapshot();

    let mut minilm_bytes = 0;
    let mut resident = Vec::with_capacity(CYCLES);
    for cycle in 0..CYCLES {
        for name in ["minilm", "tiny"] {
            let lease = pool.get(name).await.unwrap();
            let out = lease.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
            assert_eq!(out.vectors.len(), texts.len());
            if name == "minilm" {
                minilm_bytes = lease.info().unwrap().weight_bytes;
            }
            drop(lease);
            // One slot: only the model just used is live.
            assert_eq!(live_models(), 1, "cycle {cycle}: the evicted model was not released");
        }
        let snap = settled_snapshot();
        assert_eq!(snap.model_weights, live_weight_bytes());
        resident.push(snap.resident_anon);
    }
    let stats = pool.stats();
    assert_eq!(stats.loads, 2 * CYCLES as u64);
    assert_eq!(stats.evictions.capacity, 2 * CYCLES as u64 - 1);
    assert!(minilm_bytes > 80 << 20, "MiniLM holds about 87 MiB of weights, got {minilm_bytes}");

    // Warm-up (allocator pools, libtorch's one-time state) happens in the first cycles;
    // from then on the level must stay flat.
    let base = resident[1];
    let worst = resident[2..].iter().copied().max().unwrap();
    eprintln!(
        "anonymous resident before {:.1} MiB, after cycle 1 {:.1} MiB, after cycle 2 {:.1} MiB, worst later {:.1} MiB, last {:.1} MiB",
        mib(before.resident_anon),
        mib(resident[0]),
        mib(base),
        mib(worst),
        mib(*resident.last().unwrap())
    );
    assert!(
        growth(base, worst) <= 0.05,
        "resident memory grew {:.1}% over {CYCLES} eviction cycles ({:.1} -> {:.1} MiB); a swap of MiniLM \
         ({:.1} MiB of weights) is leaking",
        100.0 * growth(base, worst),
        mib(base),
        mib(worst),
        mib(minilm_bytes)
    );

    let report = pool.close().await;
    assert_eq!(report.models_left, 0);
    assert_eq!(live_models(), 0);
    assert_eq!(embed_testkit::memory::wait_for_no_live_models(Duration::from_secs(5)), 0);
}
