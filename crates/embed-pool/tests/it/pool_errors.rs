//! Every failure is typed, names the model, and leaves the pool healthy.

use crate::common;

use std::time::Duration;

use common::{CountingLoader, TinyModels};
use embed_core::memory::live_models;
use embed_core::ModelSpec;
use embed_pool::{Limit, Pool, PoolConfig, PoolError, UnloadMode, PoolTimeouts};
use embed_testkit::{corrupt_weights, TinyModel};


#[tokio::test]
async fn unknown_and_traversal_names_load_nothing() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let loader = CountingLoader::with_delay(Duration::ZERO);
    let pool = Pool::with_loader(PoolConfig::default(), models.registry(), loader.clone());
    let real_dir = models.dirs[0].1.to_string_lossy().into_owned();
    for name in ["nope", "../../etc", "/etc", "..", "../m0", "m0/../m0", "", real_dir.as_str()] {
        match pool.get(name).await {
            Err(PoolError::UnknownModel { name: n }) => assert_eq!(n, name),
            other => panic!("{name:?}: expected UnknownModel, got {other:?}"),
        }
    }
    let err = pool.get("../../etc").await.unwrap_err();
    assert!(err.to_string().contains("../../etc"), "message names the model: {err}");
    assert_eq!(loader.calls(), 0, "nothing may be loaded for an unregistered name");
    assert!(pool.status().models.is_empty());
    assert_eq!(live_models(), 0);

    // The pool is fine afterwards.
    drop(pool.get("m0").await.unwrap());
    assert_eq!(loader.calls(), 1);
    pool.close().await;
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn arbitrary_sources_are_parsed_when_allowed() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let pool = Pool::new(PoolConfig::default().with_arbitrary_sources(true), Default::default());
    match pool.get("../../no/such/dir").await {
        Err(PoolError::InvalidSource { name, .. }) => assert_eq!(name, "../../no/such/dir"),
        other => panic!("expected InvalidSource, got {other:?}"),
    }
    let dir = models.dirs[0].1.to_string_lossy().into_owned();
    let lease = pool.get(&dir).await.unwrap();
    assert!(lease.is_ready());
    drop(lease);
    pool.close().await;
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn failed_load_is_typed_counted_and_leaves_no_entry() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let (_bad_tmp, bad_dir) = TinyModel { seed: 3, ..Default::default() }.write_temp();
    corrupt_weights(&bad_dir);
    let registry = models.registry().with("bad", ModelSpec::new(bad_dir.to_string_lossy()));
    let loader = CountingLoader::with_delay(Duration::ZERO);
    let pool = Pool::with_loader(PoolConfig::default(), registry, loader.clone());

    let err = pool.get("bad").await.unwrap_err();
    match &err {
        PoolError::Load { name, source } => {
            assert_eq!(name, "bad");
            assert!(matches!(**source, embed_core::Error::InvalidWeights { .. }), "{source:?}");
        }
        other => panic!("expected Load, got {other:?}"),
    }
    assert!(err.to_string().contains("\"bad\""), "{err}");
    assert!(pool.status().model("bad").is_none(), "a failed load leaves no entry");
    assert_eq!(pool.stats().load_failures, 1);

    // Every concurrent waiter of one failed load gets the error; it was tried once.
    let results = futures::future::join_all((0..8).map(|_| pool.get("bad"))).await;
    assert!(results.iter().all(|r| matches!(r, Err(PoolError::Load { .. }))));
    assert_eq!(loader.calls(), 2, "eight concurrent gets share one (failing) load");
    assert_eq!(pool.stats().load_failures, 2);

    // The next get retries, and good models still load.
    assert!(pool.get("bad").await.is_err());
    assert_eq!(loader.calls(), 3);
    let good = pool.get("m0").await.unwrap();
    assert!(good.is_ready());
    assert_eq!(pool.status().models.len(), 1);
    drop(good);
    pool.close().await;
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn exhausted_when_every_slot_is_leased() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(2);
    let config = PoolConfig::default().with_max_models(1).with_timeouts(PoolTimeouts { wait: Duration::from_millis(200), ..PoolTimeouts::default() });
    let pool = Pool::new(config, models.registry());
    let held = pool.get("m0").await.unwrap();

    let started = std::time::Instant::now();
    match pool.get("m1").await {
        Err(PoolError::Exhausted { name, limit, waited }) => {
            assert_eq!(name, "m1");
            assert_eq!(limit, Limit::MaxModels(1));
            assert!(waited >= Duration::from_millis(200), "{waited:?}");
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(held.is_ready(), "the leased model was not touched");
    let stats = pool.stats();
    assert_eq!((stats.exhausted, stats.capacity_waits), (1, 1));
    assert!(stats.capacity_wait_time >= Duration::from_millis(200));
    assert_eq!(stats.evictions.total(), 0);

    // Once the lease ends, the same request succeeds.
    drop(held);
    let other = pool.get("m1").await.unwrap();
    assert!(other.is_ready());
    assert_eq!(pool.stats().evictions.capacity, 1);
    drop(other);
    pool.close().await;
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn unload_fail_if_leased_is_typed() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let pool = Pool::new(PoolConfig::default(), models.registry());
    let lease = pool.get("m0").await.unwrap();
    match pool.unload("m0", UnloadMode::FailIfLeased).await {
        Err(PoolError::Leased { name, leases }) => assert_eq!((name.as_str(), leases), ("m0", 1)),
        other => panic!("expected Leased, got {other:?}"),
    }
    assert!(lease.is_ready());
    drop(lease);
    let report = pool.unload("m0", UnloadMode::FailIfLeased).await.unwrap().expect("it was loaded");
    assert_eq!(report.model.as_deref(), Some("m0"));
    assert!(report.model_weight_bytes > 0);
    assert_eq!(pool.unload("m0", UnloadMode::FailIfLeased).await.unwrap(), None);
    assert_eq!(live_models(), 0);
    pool.close().await;
}

#[tokio::test]
async fn model_larger_than_the_budget_is_refused() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let pool = Pool::new(PoolConfig::default().with_memory_budget(Some(1000)), models.registry());
    match pool.get("m0").await {
        Err(PoolError::ModelTooLarge { name, bytes, budget }) => {
            assert_eq!(name, "m0");
            assert!(bytes > budget);
        }
        other => panic!("expected ModelTooLarge, got {other:?}"),
    }
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn closed_pool_refuses_leases() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let pool = Pool::new(PoolConfig::default(), models.registry());
    pool.preload("m0").await.unwrap();
    let report = pool.close().await;
    assert_eq!((report.released, report.models_left), (1, 0));
    assert!(matches!(pool.get("m0").await, Err(PoolError::Closed { name }) if name == "m0"));
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn load_timeout_is_typed() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let loader = CountingLoader::with_delay(Duration::from_secs(5));
    let config = PoolConfig::default().with_timeouts(PoolTimeouts { load: Some(Duration::from_millis(50)), ..PoolTimeouts::default() });
    let pool = Pool::with_loader(config, models.registry(), loader);
    match pool.get("m0").await {
        Err(PoolError::LoadTimeout { name, timeout }) => {
            assert_eq!(name, "m0");
            assert_eq!(timeout, Duration::from_millis(50));
        }
        other => panic!("expected LoadTimeout, got {other:?}"),
    }
    assert!(pool.status().models.is_empty());
    assert_eq!(pool.stats().load_failures, 1);
}

/// A model by hub id under a memory budget: the estimate comes from the sharded index's
/// `metadata.total_size` (fetched with `config.json`, before any shard), so a model that cannot
/// fit is refused without downloading its weights, and one that fits loads.
#[tokio::test]
async fn a_hub_model_larger_than_the_budget_is_refused_before_any_shard() {
    let _gate = embed_testkit::module_gate(module_path!());
    use embed_core::{DType, ModelOptions};
    use embed_pool::ModelRegistry;
    let _s = embed_testkit::serial().await;
    let hub = embed_testkit::hub::StandInHub::start();
    let sharded = embed_testkit::checkpoints::sharded_fixture("qwen3", 3);
    hub.publish("org/qwen3-sharded", "main", "0123456789abcdef0123456789abcdef01234567", sharded.path());
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(sharded.path().join("model.safetensors.index.json")).unwrap()).unwrap();
    let total = index["metadata"]["total_size"].as_u64().unwrap();
    // Hub environment variables are process-wide; no other test in this binary reads them.
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_ENDPOINT", hub.endpoint());
    std::env::set_var("HF_HOME", home.path());
    for var in ["HF_HUB_OFFLINE", "HF_TOKEN", "HF_TOKEN_PATH"] {
        std::env::remove_var(var);
    }
    let spec = |dtype| ModelSpec::new("org/qwen3-sharded").with_options(ModelOptions::default().with_dtype(dtype));

    // The fixture is float32: at f32 it needs `total` bytes, at bf16 half of them.
    let pool = Pool::new(PoolConfig::default().with_memory_budget(Some(total - 1)), ModelRegistry::new().with("big", spec(DType::F32)));
    match pool.get("big").await {
        Err(PoolError::ModelTooLarge { name, bytes, budget }) => assert_eq!((name.as_str(), bytes, budget), ("big", total, total - 1)),
        other => panic!("expected ModelTooLarge, got {other:?}"),
    }
    let fetched: Vec<String> = hub.requests().into_iter().map(|r| r.path).collect();
    assert!(fetched.iter().any(|p| p.ends_with("/resolve/main/model.safetensors.index.json")), "{fetched:?}");
    assert!(!fetched.iter().any(|p| p.contains("/model-0000")), "a shard was fetched for a model the budget refuses: {fetched:?}");
    assert_eq!(live_models(), 0);
    pool.close().await;

    let pool = Pool::new(PoolConfig::default().with_memory_budget(Some(total - 1)), ModelRegistry::new().with("half", spec(DType::Bf16)));
    let lease = pool.get("half").await.unwrap_or_else(|e| panic!("bf16 fits in {} bytes: {e}", total - 1));
    drop(lease);
    pool.close().await;
    assert_eq!(live_models(), 0);
    for var in ["HF_ENDPOINT", "HF_HOME"] {
        std::env::remove_var(var);
    }
}
