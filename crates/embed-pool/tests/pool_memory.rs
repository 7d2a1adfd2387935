//! Swapping a real model in and out of a one-slot pool does not grow the process: every
//! eviction gives all of the model's memory back before the next load. Proved from the C
//! allocator (where libtorch's CPU tensors live), not from the pool's own counters: evicting
//! MiniLM frees its weights there, and after warm-up the allocator's in-use bytes stay within
//! max(8 MiB, 3 %) and anonymous RSS within max(24 MiB, 5 %) (the rules of `cargo xtask leak-check`).

use std::time::Duration;

use embed_core::memory::live_models;
use embed_core::{EmbedOptions, ModelSpec};
use embed_pool::{ModelRegistry, Pool, PoolConfig};
use embed_testkit::memory::{allocator_slack, assert_weights_freed, mib, resident_slack, settled_snapshot};
use embed_testkit::{minilm_dir, TinyModel};

const CYCLES: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_eviction_cycles_keep_memory_flat() {
    let (_tmp, tiny_dir) = TinyModel::default().write_temp();
    let registry = ModelRegistry::new()
        .with("minilm", ModelSpec::new(minilm_dir().to_string_lossy()))
        .with("tiny", ModelSpec::new(tiny_dir.to_string_lossy()));
    let pool = Pool::new(PoolConfig::default().with_max_models(1), registry);
    let texts: Vec<String> = (0..16).map(|i| format!("sentence number {i} about memory and models")).collect();

    let mut minilm_bytes = 0;
    let mut after = Vec::with_capacity(CYCLES);
    for cycle in 0..CYCLES {
        let lease = pool.get("minilm").await.unwrap();
        let out = lease.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
        assert_eq!(out.vectors.len(), texts.len());
        minilm_bytes = lease.info().unwrap().weight_bytes;
        drop(lease);
        let with_minilm = settled_snapshot();
        assert_eq!((with_minilm.live_models, with_minilm.model_weights), (1, minilm_bytes));

        // Getting the tiny model evicts MiniLM (one slot) before loading.
        let lease = pool.get("tiny").await.unwrap();
        let out = lease.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
        assert_eq!(out.vectors.len(), texts.len());
        let tiny_bytes = lease.info().unwrap().weight_bytes;
        drop(lease);
        let with_tiny = settled_snapshot();
        assert_eq!(live_models(), 1, "cycle {cycle}: the evicted model was not released");
        assert_eq!(with_tiny.model_weights, tiny_bytes, "cycle {cycle}: only the tiny model is accounted");
        // MiniLM's weights are gone from the allocator (the tiny model's are a few hundred KiB).
        assert_weights_freed(&format!("cycle {cycle}: evicting MiniLM"), &with_minilm, &with_tiny, minilm_bytes - tiny_bytes);
        after.push(with_tiny);
    }
    let stats = pool.stats();
    assert_eq!(stats.loads, 2 * CYCLES as u64);
    assert_eq!(stats.evictions.capacity, 2 * CYCLES as u64 - 1);
    assert!(minilm_bytes > 80 << 20, "MiniLM holds about 87 MiB of weights, got {minilm_bytes}");

    // Warm-up (allocator pools, libtorch's one-time state) happens in the first cycles; from
    // then on the levels must stay flat.
    let base = after[1];
    let worst_alloc = after[2..].iter().map(|s| s.cpu_allocator).max().unwrap();
    let worst_rss = after[2..].iter().map(|s| s.resident_anon).max().unwrap();
    eprintln!(
        "after cycle 2 / worst later / last: allocator {:.1} / {:.1} / {:.1} MiB, anonymous resident {:.1} / {:.1} / {:.1} MiB",
        mib(base.cpu_allocator),
        mib(worst_alloc),
        mib(after.last().unwrap().cpu_allocator),
        mib(base.resident_anon),
        mib(worst_rss),
        mib(after.last().unwrap().resident_anon)
    );
    assert!(
        worst_alloc.saturating_sub(base.cpu_allocator) <= allocator_slack(base.cpu_allocator),
        "allocator in-use bytes grew {:.1} MiB over {CYCLES} eviction cycles; a swap of MiniLM ({:.1} MiB of weights) is leaking",
        mib(worst_alloc.saturating_sub(base.cpu_allocator)),
        mib(minilm_bytes)
    );
    assert!(
        worst_rss.saturating_sub(base.resident_anon) <= resident_slack(base.resident_anon),
        "anonymous resident memory grew {:.1} MiB over {CYCLES} eviction cycles (allowed {:.1} MiB)",
        mib(worst_rss.saturating_sub(base.resident_anon)),
        mib(resident_slack(base.resident_anon))
    );

    let report = pool.close().await;
    assert_eq!(report.models_left, 0);
    assert_eq!(embed_testkit::memory::wait_for_no_live_models(Duration::from_secs(5)), 0);
}
