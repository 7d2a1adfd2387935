//! TTL, pinning, memory budget, unload, close, drop and cancellation.

use crate::common;

use std::time::Duration;

use common::{CountingLoader, TinyModels};
use embed_core::memory::live_models;
use embed_core::{EmbedOptions, ResolvedDevice};
use embed_pool::{EvictionCause, Lease, ModelSettings, ModelState, Pool, PoolConfig, PoolError, UnloadMode, PoolTimeouts};
use embed_testkit::eventually;
use embed_testkit::memory::wait_for_no_live_models;

// Tests here check the process-wide live-model count: each takes embed_testkit::serial().

#[tokio::test(start_paused = true)]
async fn ttl_expiry_respects_per_model_ttl_pins_and_leases() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(3);
    let registry = models
        .registry()
        .with_settings("m1", models.spec(1), ModelSettings::default().with_ttl(Duration::from_secs(2)))
        .with_settings("m2", models.spec(2), ModelSettings::default().with_pinned(true));
    let config = PoolConfig::default().with_default_ttl(Some(Duration::from_secs(10))).with_maintenance_interval(None);
    let pool = Pool::new(config, registry);
    for m in ["m0", "m1", "m2"] {
        pool.preload(m).await.unwrap();
    }
    assert_eq!(live_models(), 3);

    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(pool.evict_expired().await, ["m1"]);
    assert_eq!(live_models(), 2);

    tokio::time::advance(Duration::from_secs(8)).await;
    assert_eq!(pool.evict_expired().await, ["m0"]);
    let status = pool.status();
    assert_eq!(status.models.len(), 1);
    assert!(status.models[0].pinned, "the pinned model never expires");

    // A leased model does not expire either, however long it is held.
    let lease = pool.get("m0").await.unwrap();
    tokio::time::advance(Duration::from_secs(100)).await;
    assert!(pool.evict_expired().await.is_empty());
    assert!(lease.is_ready());
    drop(lease);
    // Idle time counts from the return of the lease.
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(pool.evict_expired().await.is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(pool.evict_expired().await, ["m0"]);
    assert_eq!(pool.stats().evictions.ttl, 3);
    assert_eq!(live_models(), 1);

    pool.close().await;
    assert_eq!(live_models(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_task_unloads_idle_models() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let config = PoolConfig::default()
        .with_default_ttl(Some(Duration::from_millis(200)))
        .with_maintenance_interval(Some(Duration::from_millis(20)));
    let pool = Pool::new(config, models.registry());
    pool.preload("m0").await.unwrap();
    assert_eq!(pool.status().models.len(), 1);
    let pool2 = pool.clone();
    eventually("the pool is empty", Duration::from_secs(10), move || pool2.status().models.is_empty()).await;
    assert_eq!(pool.stats().evictions.ttl, 1);
    assert_eq!(live_models(), 0);
    pool.close().await;
}

#[tokio::test]
async fn memory_budget_evicts_for_memory() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(2);
    let file = std::fs::metadata(models.dirs[0].1.join("model.safetensors")).unwrap().len();
    let budget = file * 3 / 2;
    let pool = Pool::new(PoolConfig::default().with_memory_budget(Some(budget)), models.registry());
    pool.preload("m0").await.unwrap();
    let status = pool.status();
    let m0 = status.model("m0").unwrap();
    assert!(m0.weight_bytes > budget / 3 && m0.weight_bytes <= budget, "{} vs {budget}", m0.weight_bytes);
    assert_eq!(m0.device, Some(ResolvedDevice::Cpu));

    let lease = pool.get("m1").await.unwrap();
    let stats = pool.stats();
    assert_eq!((stats.evictions.memory, stats.evictions.capacity), (1, 0));
    assert_eq!(pool.status().models.len(), 1);
    assert!(pool.status().weight_bytes <= budget);
    assert_eq!(live_models(), 1);

    // With m1 leased, m0 cannot come back within the budget.
    let pool_short = Pool::new(
        PoolConfig::default().with_memory_budget(Some(budget)).with_timeouts(PoolTimeouts { wait: Duration::from_millis(50), ..PoolTimeouts::default() }),
        models.registry(),
    );
    let held = pool_short.get("m0").await.unwrap();
    match pool_short.get("m1").await {
        Err(PoolError::Exhausted { limit, .. }) => assert_eq!(limit, embed_pool::Limit::MemoryBudget(budget)),
        other => panic!("expected Exhausted, got {other:?}"),
    }
    drop((held, lease));
    pool_short.close().await;
    pool.close().await;
    assert_eq!(live_models(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_waits_for_leases_and_blocks_new_ones() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let pool = Pool::new(PoolConfig::default().with_timeouts(PoolTimeouts { wait: Duration::from_millis(100), ..PoolTimeouts::default() }), models.registry());
    let lease = pool.get("m0").await.unwrap();
    let unloading = tokio::spawn({
        let pool = pool.clone();
        async move { pool.unload("m0", UnloadMode::WaitForLeases).await }
    });
    let p = pool.clone();
    eventually("m0 is draining", Duration::from_secs(10), move || p.status().model("m0").is_some_and(|m| m.state == ModelState::Draining)).await;
    // No new leases while draining.
    assert!(matches!(pool.get("m0").await, Err(PoolError::Unloading { .. })));
    assert!(lease.is_ready(), "existing leases keep working while draining");
    let out = lease.embed_texts(&["still here".to_string()], &EmbedOptions::default()).await.unwrap();
    assert_eq!(out.vectors.len(), 1);
    drop(lease);
    let report = unloading.await.unwrap().unwrap().expect("released");
    assert_eq!(report.model.as_deref(), Some("m0"));
    assert!(pool.status().models.is_empty());
    assert_eq!(pool.stats().evictions.explicit, 1);
    assert_eq!(live_models(), 0);
    pool.close().await;
}

#[tokio::test]
async fn cancelled_unload_puts_the_model_back() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let pool = Pool::new(PoolConfig::default(), models.registry());
    let lease = pool.get("m0").await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(30), pool.unload("m0", UnloadMode::WaitForLeases)).await;
    assert!(cancelled.is_err());
    assert_eq!(pool.status().model("m0").unwrap().state, ModelState::Ready);
    let hits = pool.stats().hits;
    let again = pool.get("m0").await.unwrap();
    assert_eq!(pool.stats().hits, hits + 1);
    drop((lease, again));
    pool.close().await;
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn cancelled_get_during_load_leaks_no_lease() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let loader = CountingLoader::with_delay(Duration::from_millis(150));
    let pool = Pool::with_loader(PoolConfig::default(), models.registry(), loader.clone());
    assert!(tokio::time::timeout(Duration::from_millis(20), pool.get("m0")).await.is_err());
    assert_eq!(pool.status().model("m0").unwrap().state, ModelState::Loading);
    let p = pool.clone();
    // The load goes on without the caller that started it, and ends with no lease counted.
    eventually("m0 is ready", Duration::from_secs(10), move || p.status().model("m0").is_some_and(|m| m.state == ModelState::Ready)).await;
    assert_eq!(pool.status().model("m0").unwrap().leases, 0);
    drop(pool.get("m0").await.unwrap());
    assert_eq!(loader.calls(), 1);
    assert_eq!(pool.status().leases, 0);
    pool.close().await;
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn dropping_the_pool_releases_every_model() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(3);
    let pool = Pool::new(PoolConfig::default(), models.registry());
    pool.preload("m0").await.unwrap();
    pool.preload("m1").await.unwrap();
    let lease: Lease = pool.get("m2").await.unwrap();
    assert_eq!(live_models(), 3);
    drop(pool);
    // Non-blocking release: the workers finish on their own threads.
    assert_eq!(wait_for_no_live_models(Duration::from_secs(10)), 0);
    assert!(!lease.is_ready(), "a lease that outlives the pool finds its service closed");
    drop(lease);
}

#[tokio::test]
async fn with_closure_holds_a_lease_for_its_duration() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let pool = Pool::new(PoolConfig::default(), models.registry());
    let p = pool.clone();
    let dims = pool
        .with("m0", |svc| async move {
            assert_eq!(p.status().leases, 1);
            let out = svc.embed_texts(&["hi".to_string()], &EmbedOptions::default()).await?;
            Ok::<_, embed_core::Error>(out.vectors[0].len())
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dims, 32);
    let status = pool.status();
    assert_eq!(status.leases, 0);
    assert_eq!(status.models[0].state, ModelState::Ready);
    assert_eq!(Lease::name(&pool.get("m0").await.unwrap()), "m0");
    pool.close().await;
    assert_eq!(live_models(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_leases_then_forces() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(2);
    let pool = Pool::new(PoolConfig::default().with_timeouts(PoolTimeouts { close: Duration::from_secs(10), ..PoolTimeouts::default() }), models.registry());
    let lease = pool.get("m0").await.unwrap();
    pool.preload("m1").await.unwrap();
    let closing = tokio::spawn({
        let pool = pool.clone();
        async move { pool.close().await }
    });
    let p = pool.clone();
    eventually("one model is loaded", Duration::from_secs(10), move || p.status().models.len() == 1).await;
    assert!(lease.is_ready(), "close waits for the lease");
    drop(lease);
    let report = closing.await.unwrap();
    assert_eq!((report.released, report.forced_leases, report.models_left), (2, 0, 0));
    assert_eq!(live_models(), 0);

    // With a short close timeout, a lease that is never returned is overridden.
    let pool = Pool::new(PoolConfig::default().with_timeouts(PoolTimeouts { close: Duration::from_millis(50), ..PoolTimeouts::default() }), models.registry());
    let stuck = pool.get("m0").await.unwrap();
    let report = pool.close().await;
    assert_eq!((report.released, report.forced_leases), (1, 1));
    assert!(!stuck.is_ready());
    assert_eq!(live_models(), 0);
    assert_eq!(pool.stats().evictions.get(EvictionCause::Explicit), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_a_load_releases_it() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(1);
    let loader = CountingLoader::with_delay(Duration::from_millis(100));
    let pool = Pool::with_loader(PoolConfig::default(), models.registry(), loader);
    let getting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get("m0").await.map(drop) }
    });
    let p = pool.clone();
    eventually("a model is loaded", Duration::from_secs(10), move || !p.status().models.is_empty()).await;
    let report = pool.close().await;
    assert_eq!(report.models_left, 0);
    assert!(matches!(getting.await.unwrap(), Err(PoolError::Closed { .. })));
    assert!(pool.status().models.is_empty());
    assert_eq!(live_models(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_counts_int8_models_at_their_quantized_size() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let dir = embed_testkit::minilm_dir();
    let spec = |dtype| embed_core::ModelSpec::new(dir.to_string_lossy()).with_options(embed_core::ModelOptions::default().with_dtype(dtype));
    let registry = embed_pool::ModelRegistry::new()
        .with("a", spec(embed_core::DType::Int8))
        .with("b", spec(embed_core::DType::Int8))
        .with("f32", spec(embed_core::DType::F32));
    // Two int8 MiniLMs (~24 MB each) fit where one f32 MiniLM (~90 MB) does not.
    let budget = 60 << 20;
    let pool = Pool::new(PoolConfig::default().with_memory_budget(Some(budget)), registry);
    let (a, b) = (pool.get("a").await.unwrap(), pool.get("b").await.unwrap());
    let status = pool.status();
    for name in ["a", "b"] {
        let bytes = status.model(name).unwrap().weight_bytes;
        assert!(bytes < 30 << 20, "{name}: an int8 MiniLM counts {bytes} bytes");
    }
    assert_eq!(pool.stats().evictions.total(), 0, "both fit");
    let texts = vec!["int8 in a pool".to_string()];
    assert_eq!(a.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors[0].len(), 384);
    drop((a, b));
    match pool.get("f32").await {
        Err(PoolError::ModelTooLarge { name, bytes, budget: limit }) => {
            assert_eq!((name.as_str(), limit), ("f32", budget));
            assert!(bytes > 80 << 20, "the f32 estimate is {bytes}");
        }
        other => panic!("expected ModelTooLarge, got {other:?}"),
    }
    pool.close().await;
    assert_eq!(live_models(), 0);
}
