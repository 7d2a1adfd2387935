//! The public facade: [`Pool`] and the types its methods take and return.
//!
//! The decisions taken under the pool's lock live in [`crate::state`], the tasks that carry
//! them out in [`crate::tasks`]; this file only turns their results into the public types
//! (e.g. builds each [`Lease`]).

use std::future::Future;
use std::sync::Arc;

use embed_core::{CleanupReport, EmbeddingService, ModelSpec};
use tokio::time::Instant;

use crate::lease::Lease;
use crate::tasks::Shared;
use crate::{
    CudaDriver, DenseLoader, DeviceMemory, ModelLoader, ModelRegistry, ModelSettings, ModelStatus, PoolConfig, PoolError,
    PoolStats, PoolStatus, WarmMode, WarmTierStatus,
};

/// What [`Pool::unload`] does when the model is leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnloadMode {
    /// Stop new leases at once, wait for the current ones to end, then release the model.
    /// (Dropping the `unload` future before that puts the model back in service.)
    WaitForLeases,
    /// Fail with [`PoolError::Leased`] if the model has leases (or callers waiting for its load).
    FailIfLeased,
}

/// What [`Pool::close`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CloseReport {
    /// Models released by `close` itself.
    pub released: usize,
    /// Leases still held when the close timeout passed; their models were released anyway
    /// (those leases now see a closed service).
    pub forced_leases: usize,
    /// Models still in the pool when `close` gave up waiting (loads or releases that did not
    /// finish within twice the close timeout). 0 when everything was released.
    pub models_left: usize,
}

/// An LRU pool of loaded embedding models. Cheap to clone (a handle); the models are released
/// when the last handle is dropped (without blocking) or by [`Pool::close`] (waiting).
///
/// Requires a tokio runtime: loads and releases run on tasks of their own.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.status();
        f.debug_struct("Pool")
            .field("models", &status.models.iter().map(|m| (&m.name, m.state, m.leases)).collect::<Vec<_>>())
            .field("max_models", &status.max_models)
            .field("closed", &status.closed)
            .finish()
    }
}

impl Pool {
    /// A pool of [`embed_core::DenseEmbeddingService`] models.
    pub fn new(config: PoolConfig, registry: ModelRegistry) -> Self {
        Self::with_loader(config, registry, DenseLoader)
    }

    /// A pool whose models come from `loader`.
    pub fn with_loader(config: PoolConfig, registry: ModelRegistry, loader: impl ModelLoader) -> Self {
        Self::with_parts(config, registry, loader, CudaDriver)
    }

    /// A pool whose models come from `loader` and that reads CUDA free memory from `memory`
    /// (for the memory budget and the pressure levels; tests pass a fake).
    pub fn with_parts(config: PoolConfig, registry: ModelRegistry, loader: impl ModelLoader, memory: impl DeviceMemory) -> Self {
        Pool { shared: Shared::new(config, registry, Arc::new(loader), Arc::new(memory)) }
    }

    /// The limits, budgets and timeouts this pool was created with.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Adds (or replaces) a registry entry. A loaded model keeps its old spec until it is
    /// next loaded.
    pub fn register(&self, name: impl Into<String>, spec: ModelSpec, settings: ModelSettings) {
        self.shared.register(name.into(), spec, settings);
    }

    /// A copy of the registry.
    pub fn registry(&self) -> ModelRegistry {
        self.shared.registry().clone()
    }

    /// A lease on `name`, loading it first if needed. The model stays loaded while the lease is
    /// held. Concurrent callers for one unloaded model share a single load. When the pool is
    /// full, the least recently used idle model is evicted; if every model is leased, this
    /// waits up to [`PoolTimeouts::wait`](crate::PoolTimeouts::wait) for a lease to end.
    ///
    /// Cancellation safe: dropping the future never leaks a lease or a slot.
    pub async fn get(&self, name: &str) -> Result<Lease, PoolError> {
        let (slot, id) = self.shared.get(name).await?;
        Ok(Lease::new(&self.shared, slot, id))
    }

    /// Runs `f` with the model `name`, holding a lease until the future it returns completes.
    ///
    /// The `Arc` handed to `f` is for this call only; kept beyond it, it may find the model
    /// released, or offloaded to the warm tier (a request then restores it on the device
    /// outside the pool's accounting, until the pool next restores or releases it).
    pub async fn with<F, Fut, T>(&self, name: &str, f: F) -> Result<T, PoolError>
    where
        F: FnOnce(Arc<dyn EmbeddingService>) -> Fut,
        Fut: Future<Output = T>,
    {
        let lease = self.get(name).await?;
        let out = f(Lease::service(&lease)).await;
        drop(lease);
        Ok(out)
    }

    /// Loads `name` (if it is not loaded yet) without keeping a lease.
    pub async fn preload(&self, name: &str) -> Result<(), PoolError> {
        drop(self.get(name).await?);
        Ok(())
    }

    /// Releases `name` and waits until it is freed. Returns its cleanup report, or `None` when
    /// it was not loaded (or someone else released it meanwhile). A load in flight is waited
    /// for, then released.
    pub async fn unload(&self, name: &str, mode: UnloadMode) -> Result<Option<CleanupReport>, PoolError> {
        self.shared.unload(name, mode == UnloadMode::FailIfLeased).await
    }

    /// Moves the idle model `name` to the warm tier now (pinned models too) and waits until its
    /// device memory is back. Returns false when there was nothing to move (not in the pool, or
    /// warm already). Fails with [`PoolError::CannotOffload`] when it is leased or busy, the
    /// tier does not apply to it, the host budget has no room, or the move failed (the model is
    /// then unloaded, as an eviction would).
    pub async fn offload(&self, name: &str) -> Result<bool, PoolError> {
        self.shared.offload(name).await
    }

    /// Unloads every idle, unpinned model whose TTL has passed, and waits until they are
    /// freed. Returns their names. The background task calls this every
    /// [`PoolConfig::maintenance_interval`]; tests can call it directly (with tokio's paused
    /// clock, after `tokio::time::advance`).
    pub async fn evict_expired(&self) -> Vec<String> {
        self.shared.evict_expired_at(Instant::now()).await
    }

    /// Closes the pool: new `get`s fail with [`PoolError::Closed`] (callers waiting for room
    /// too), idle models are released at once, leased ones when their lease ends or, after
    /// [`PoolTimeouts::close`](crate::PoolTimeouts::close), anyway. Returns once every model is freed (or after
    /// twice the close timeout; see [`CloseReport::models_left`]). Idempotent.
    pub async fn close(&self) -> CloseReport {
        let (released, forced_leases, models_left) = self.shared.close().await;
        CloseReport { released, forced_leases, models_left }
    }

    /// True once [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// The models in the pool, least recently used first.
    pub fn status(&self) -> PoolStatus {
        let st = self.shared.lock();
        let mut entries: Vec<_> = st.entries.iter().collect();
        entries.sort_by_key(|(_, e)| e.tick);
        let models: Vec<ModelStatus> = entries
            .into_iter()
            .map(|(name, e)| ModelStatus {
                name: name.clone(),
                state: e.state(),
                weight_bytes: e.model_bytes(),
                device_bytes: e.bytes(),
                host_bytes: e.host(),
                leases: e.leases,
                last_used: Instant::from_std(e.last_used),
                pinned: e.pinned,
                device: e.slot().and_then(|s| s.device),
                kind: e.slot().and_then(|s| s.kind),
            })
            .collect();
        let (closed, host_budget) = (st.closed, st.warm.host_budget);
        drop(st);
        let warm_tier = self.warm_tier();
        PoolStatus {
            weight_bytes: models.iter().map(|m| m.device_bytes).sum(),
            host_bytes: models.iter().map(|m| m.host_bytes).sum(),
            host_budget: if warm_tier.enabled { host_budget } else { 0 },
            warm_tier,
            pressure: self.shared.pressure(),
            leases: models.iter().map(|m| m.leases).sum(),
            models,
            max_models: self.shared.config.max_models.max(1),
            memory_budget: self.shared.config.memory_budget,
            closed,
        }
    }

    /// Whether the warm tier is on, and what it applies to (or why it is off).
    fn warm_tier(&self) -> WarmTierStatus {
        let budget = self.shared.config.warm.host_budget.bytes();
        let (enabled, note) = match self.shared.config.warm.mode {
            WarmMode::Off => (false, "off: configured off".to_string()),
            _ if budget == 0 => (false, "off: the host budget is 0 bytes".to_string()),
            WarmMode::Auto if !embed_core::memory::accelerator_available() => {
                (false, "off: no CUDA device (a CPU model's weights are in host memory already; nothing to gain)".to_string())
            }
            WarmMode::Auto => (true, format!("on for CUDA models, {budget} bytes of host memory")),
            WarmMode::Always => (true, format!("on for every model (CPU ones too), {budget} bytes of host memory")),
        };
        WarmTierStatus { enabled, note }
    }

    /// Runs one memory-pressure check now (the background task runs one every
    /// [`Pressure::interval`](crate::Pressure::interval)): on each CUDA device at the high
    /// level, idle models go warm (least recently used first) until use is back under the
    /// moderate threshold; at the critical level they are unloaded. Leased and pinned models
    /// are never touched. Waits for the moves; returns the models moved.
    pub async fn relieve_pressure(&self) -> Vec<String> {
        self.shared.relieve_pressure().await
    }

    /// Counters since the pool was created.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// The newest [`PoolConfig::history_len`] loads, failed loads and releases, oldest first,
    /// each with its cause, size, time and duration: why a request had to wait for a load.
    pub fn history(&self) -> Vec<crate::PoolEvent> {
        self.shared.history.snapshot()
    }
}

#[cfg(test)]
mod tests {
    //! The facade against fake services: exact byte counts, panics, services that die.

    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::fakes::FakeLoader;
    use crate::{Limit, PoolTimeouts};

    fn registry(names: &[(&str, Option<u64>)]) -> ModelRegistry {
        names.iter().fold(ModelRegistry::new(), |r, (name, hint)| {
            let settings = match hint {
                Some(h) => ModelSettings::default().with_weight_bytes_hint(*h),
                None => ModelSettings::default(),
            };
            // Hub-style sources: nothing on disk to estimate from.
            r.with_settings(*name, ModelSpec::new(format!("fake/{name}")), settings)
        })
    }

    fn names(pool: &Pool) -> Vec<String> {
        pool.status().models.into_iter().map(|m| m.name).collect()
    }

    #[tokio::test]
    async fn a_model_larger_than_its_estimate_pushes_idle_ones_out() {
        let loader = Arc::new(FakeLoader {
            bytes: [("a".to_string(), 60), ("b".to_string(), 60)].into(),
            ..Default::default()
        });
        let config = PoolConfig::default().with_memory_budget(Some(100));
        let pool = Pool::with_loader(config, registry(&[("a", Some(10)), ("b", Some(10))]), loader.clone());
        pool.preload("a").await.unwrap();
        // b's estimate (10) fits next to a (60); its real size (60) does not: a goes.
        pool.preload("b").await.unwrap();
        tokio::task::yield_now().await;
        let p = pool.clone();
        for _ in 0..100 {
            if names(&p) == ["b"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(names(&pool), ["b"]);
        assert_eq!(pool.stats().evictions.memory, 1);
        // Now a's real size is known: b is evicted before a loads.
        pool.preload("a").await.unwrap();
        assert_eq!(names(&pool), ["a"]);
        assert_eq!(pool.stats().evictions.memory, 2);
        assert_eq!(pool.status().weight_bytes, 60);
    }

    #[tokio::test]
    async fn loader_panic_is_typed_and_leaves_no_entry() {
        let loader = FakeLoader { panic_on: Some("boom".into()), ..Default::default() };
        let pool = Pool::with_loader(PoolConfig::default(), registry(&[("boom", None), ("ok", None)]), loader);
        match pool.get("boom").await {
            Err(PoolError::LoaderPanicked { name, message }) => {
                assert_eq!(name, "boom");
                assert!(message.contains("fake loader told to panic"), "{message}");
            }
            other => panic!("expected LoaderPanicked, got {other:?}"),
        }
        assert!(pool.status().models.is_empty());
        assert_eq!(pool.stats().load_failures, 1);
        pool.preload("ok").await.unwrap();
    }

    #[tokio::test]
    async fn a_service_cleaned_up_behind_the_pools_back_is_reloaded() {
        let loader = Arc::new(FakeLoader::default());
        let pool = Pool::with_loader(PoolConfig::default(), registry(&[("a", None)]), loader.clone());
        let lease = pool.get("a").await.unwrap();
        lease.cleanup().await.unwrap();
        drop(lease);
        let lease = pool.get("a").await.unwrap();
        assert!(lease.is_ready());
        assert_eq!(loader.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_models_are_never_evicted_for_room() {
        let reg = registry(&[("b", None)]).with_settings(
            "a",
            ModelSpec::new("fake/a"),
            ModelSettings::default().with_pinned(true),
        );
        let config = PoolConfig::default().with_max_models(1).with_timeouts(PoolTimeouts { wait: Duration::from_secs(1), ..PoolTimeouts::default() });
        let pool = Pool::with_loader(config, reg, FakeLoader::default());
        pool.preload("a").await.unwrap();
        match pool.get("b").await {
            Err(PoolError::Exhausted { limit: Limit::MaxModels(1), .. }) => {}
            other => panic!("expected Exhausted, got {other:?}"),
        }
        assert_eq!(names(&pool), ["a"]);
        // Explicit unload still works.
        assert!(pool.unload("a", UnloadMode::FailIfLeased).await.unwrap().is_some());
        pool.preload("b").await.unwrap();
        assert_eq!(names(&pool), ["b"]);
    }

    #[tokio::test]
    async fn lease_derefs_to_the_service_and_reports_its_name() {
        let pool = Pool::with_loader(PoolConfig::default(), registry(&[("a", None)]), FakeLoader::default());
        let lease = pool.get("a").await.unwrap();
        assert_eq!(Lease::name(&lease), "a");
        assert_eq!(lease.dimension(), Some(4));
        assert!(format!("{lease:?}").contains("\"a\""));
        assert!(format!("{pool:?}").contains("\"a\""));
    }
}
