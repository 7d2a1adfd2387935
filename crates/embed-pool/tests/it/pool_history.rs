//! `Pool::history`: every load, failed load and release in order, with its cause, the model's
//! weight bytes and how long it took; bounded by `PoolConfig::history_len`.

use crate::common;

use common::TinyModels;
use embed_core::ModelSpec;
use embed_pool::{EvictionCause, Pool, PoolAction, PoolConfig, UnloadMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_loads_evictions_failures_and_unloads_in_order() {
    let _gate = embed_testkit::module_gate(module_path!());
    let models = TinyModels::new(2);
    let registry = models.registry().with("broken", ModelSpec::new("/nonexistent/model/dir"));
    let pool = Pool::new(PoolConfig::default().with_max_models(1), registry);

    let m0 = pool.get("m0").await.unwrap();
    let m0_bytes = m0.info().unwrap().weight_bytes;
    drop(m0);
    let m1 = pool.get("m1").await.unwrap(); // evicts m0 (one slot)
    let m1_bytes = m1.info().unwrap().weight_bytes;
    drop(m1);
    assert!(pool.get("broken").await.is_err()); // evicts m1 first, then fails
    drop(pool.get("m0").await.unwrap());
    pool.unload("m0", UnloadMode::WaitForLeases).await.unwrap();

    let events = pool.history();
    let summary: Vec<(&str, PoolAction, Option<EvictionCause>, u64)> =
        events.iter().map(|e| (e.model.as_str(), e.action, e.cause, e.weight_bytes)).collect();
    assert_eq!(
        summary,
        vec![
            ("m0", PoolAction::Loaded, None, m0_bytes),
            ("m0", PoolAction::Unloaded, Some(EvictionCause::Capacity), m0_bytes),
            ("m1", PoolAction::Loaded, None, m1_bytes),
            ("m1", PoolAction::Unloaded, Some(EvictionCause::Capacity), m1_bytes),
            ("broken", PoolAction::LoadFailed, None, 0),
            ("m0", PoolAction::Loaded, None, m0_bytes),
            ("m0", PoolAction::Unloaded, Some(EvictionCause::Explicit), m0_bytes),
        ],
        "{events:#?}"
    );
    assert!(m0_bytes > 0 && m1_bytes > 0);
    for w in events.windows(2) {
        assert!(w[0].at <= w[1].at, "in time order: {events:#?}");
    }
    assert!(events.iter().filter(|e| e.action == PoolAction::Loaded).all(|e| !e.duration.is_zero()), "loads take time");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_only_the_newest_events() {
    let _gate = embed_testkit::module_gate(module_path!());
    let models = TinyModels::new(2);
    let pool = Pool::new(PoolConfig::default().with_max_models(1).with_history_len(3), models.registry());
    for _ in 0..3 {
        for name in ["m0", "m1"] {
            drop(pool.get(name).await.unwrap());
        }
    }
    let events = pool.history();
    assert_eq!(events.len(), 3, "{events:#?}");
    // The last swap: m0 loaded, m0 evicted for m1, m1 loaded.
    let last: Vec<(&str, PoolAction)> = events.iter().map(|e| (e.model.as_str(), e.action)).collect();
    assert_eq!(last, [("m0", PoolAction::Loaded), ("m0", PoolAction::Unloaded), ("m1", PoolAction::Loaded)]);
    pool.close().await;
}
