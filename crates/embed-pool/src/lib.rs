//! # embed-pool
//!
//! An LRU pool of loaded embedding models that never evicts a model in use. A server that
//! serves several models (or lets clients pick one) keeps the hot ones loaded within a slot
//! limit and a memory budget, and releases the rest, every byte of them.
//!
//! * [`Pool::get`] returns a [`Lease`]: the model stays loaded while it is held, and dropping
//!   it is a cheap synchronous return. [`Pool::with`] is the closure form.
//! * **Capacity**: [`PoolConfig::max_models`] and an optional [`PoolConfig::memory_budget`]
//!   (weight bytes as `ModelInfo::weight_bytes` reports them; on CUDA the device's free memory
//!   too). When full, the least recently used *idle* model is evicted; if every model is
//!   leased, `get` waits up to [`PoolTimeouts::wait`] for a lease to end, then fails
//!   with [`PoolError::Exhausted`] naming the limit. A model is released (worker joined,
//!   memory back) before the next one loads in its place.
//! * **Single-flight**: concurrent `get`s of an unloaded model share one load; a failed load
//!   reaches each of them and leaves nothing behind, so the next `get` tries again.
//! * **Lifetimes**: idle TTL (pool default and per model), pinning, [`Pool::preload`],
//!   [`Pool::unload`], [`Pool::evict_expired`] (also run by a background task), and
//!   [`Pool::close`]; dropping the last [`Pool`] handle starts releasing every model without
//!   blocking.
//! * **Safety of names**: only names in the [`ModelRegistry`] load, unless
//!   [`PoolConfig::allow_arbitrary_sources`] is set, so a client-supplied name such as
//!   `../../etc` never reaches the file system. Unknown names fail with
//!   [`PoolError::UnknownModel`].
//! * **Warm tier**: a model evicted from a CUDA device goes to host memory (pinned) instead of
//!   being unloaded when [`PoolConfig::warm`] allows it and its host budget has room (the least
//!   recently used warm models are unloaded to make it); a `get` restores it, single-flight
//!   like a load, bitwise the same weights, much faster. Warm models hold no slot and no device
//!   memory. On CPU-only machines it is off ([`WarmMode::Auto`]).
//! * **Memory pressure**: [`PoolConfig::pressure`] levels from the driver's free memory (read
//!   through a [`DeviceMemory`]); a background check (or [`Pool::relieve_pressure`]) offloads
//!   idle models above the high level and unloads them above the critical one, never leased
//!   or pinned ones.
//! * **Observability**: [`Pool::status`] (models, state, bytes, leases, last use) and
//!   [`Pool::stats`] (hits, misses, loads, failures, evictions by [`EvictionCause`], time spent
//!   waiting for room, offloads and restores), [`Pool::history`] (the recent loads, offloads,
//!   restores and releases with their causes).
//! * Models are created by a [`ModelLoader`] ([`DenseLoader`] by default), so tests can count
//!   or fake loads.
//!
//! No global lock is held across a load, a release or the caller's work: different models load
//! concurrently. The crate has no feature flags; it needs a tokio runtime.
//!
//! ```
//! # let (_tmp_a, dir_a) = embed_testkit::TinyModel::default().write_temp();
//! # let (_tmp_b, dir_b) = embed_testkit::TinyModel { seed: 8, ..Default::default() }.write_temp();
//! use embed_core::{EmbedOptions, EmbeddingService, ModelSpec};
//! use embed_pool::{EvictionCause, ModelRegistry, Pool, PoolConfig};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let registry = ModelRegistry::new()
//!     .with("small", ModelSpec::new(dir_a.to_string_lossy()))
//!     .with("other", ModelSpec::new(dir_b.to_string_lossy()));
//! let pool = Pool::new(PoolConfig::default().with_max_models(1), registry);
//!
//! let lease = pool.get("small").await?;
//! let out = lease.embed_texts(&["hello world".to_string()], &EmbedOptions::default()).await?;
//! assert_eq!(out.vectors[0].len(), 32);
//! drop(lease); // back to the pool, still loaded
//!
//! // One slot: "small" is idle, so it is released to make room for "other".
//! let dims = pool.with("other", |svc| async move { svc.dimension() }).await?;
//! assert_eq!(dims, Some(32));
//! assert_eq!(pool.stats().evictions.get(EvictionCause::Capacity), 1);
//!
//! pool.close().await;
//! assert_eq!(embed_core::memory::live_models(), 0);
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

mod config;
mod error;
#[cfg(test)]
mod fakes;
mod history;
mod lease;
mod loader;
mod memory_release;
mod pool;
mod probe;
mod registry;
mod state;
mod status;
mod tasks;

pub use config::{HostBudget, PoolConfig, PoolTimeouts, Pressure, PressureLevel, WarmMode, WarmTier};
pub use error::{Limit, PoolError};
pub use history::{PoolAction, PoolEvent};
pub use lease::Lease;
pub use loader::{DenseLoader, ModelLoader};
pub use pool::{CloseReport, Pool, UnloadMode};
pub use probe::{CudaDriver, DeviceMemory};
pub use registry::{ModelRegistry, ModelSettings, RegisteredModel};
pub use status::{
    DevicePressure, EvictionCause, EvictionCounts, ModelState, ModelStatus, PoolStats, PoolStatus, WarmTierStatus,
};

pub use embed_core;
