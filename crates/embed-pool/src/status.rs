//! What the pool holds now, and what it has done.

use std::time::Duration;

use embed_core::{ModelKind, ResolvedDevice};
use tokio::time::Instant;

/// Why a model left the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EvictionCause {
    /// Its slot was needed for another model (`max_models`).
    Capacity,
    /// Its memory was needed for another model (memory budget or CUDA free memory).
    Memory,
    /// It stayed idle longer than its TTL.
    Ttl,
    /// Its device's memory pressure was high (offloaded) or critical (unloaded).
    Pressure,
    /// [`crate::Pool::unload`] or [`crate::Pool::close`].
    Explicit,
}

impl EvictionCause {
    /// A short lowercase name (`capacity`, `memory`, `ttl`, `pressure`, `explicit`), for logs
    /// and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionCause::Capacity => "capacity",
            EvictionCause::Memory => "memory",
            EvictionCause::Ttl => "ttl",
            EvictionCause::Pressure => "pressure",
            EvictionCause::Explicit => "explicit",
        }
    }
}

impl std::fmt::Display for EvictionCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a model is in its life in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModelState {
    /// A load is in flight; callers asking for it wait for that one load.
    Loading,
    /// Loaded and leasable.
    Ready,
    /// Leaving the pool: no new leases; released once the current ones end.
    Draining,
    /// Its weights are moving to host memory (the warm tier).
    Offloading,
    /// Warm: weights in host memory, nothing on the device; a `get` restores it.
    Warm,
    /// Its weights are moving back to the device; callers wait for it as for a load.
    Restoring,
}

impl ModelState {
    /// A short lowercase name, for logs and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Ready => "ready",
            ModelState::Draining => "draining",
            ModelState::Offloading => "offloading",
            ModelState::Warm => "warm",
            ModelState::Restoring => "restoring",
        }
    }
}

/// One model in [`PoolStatus`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelStatus {
    /// The pool's name for it.
    pub name: String,
    /// Loading, ready, or on its way out.
    pub state: ModelState,
    /// Its weight bytes (the estimate while loading), wherever they are.
    pub weight_bytes: u64,
    /// Bytes it holds on its device (0 while warm): what the memory budget counts.
    pub device_bytes: u64,
    /// Host bytes of its warm copy (0 unless offloading, warm or restoring).
    pub host_bytes: u64,
    /// Leases held now (while loading: callers waiting for it).
    pub leases: usize,
    /// When it was last leased or returned.
    pub last_used: Instant,
    /// Never evicted.
    pub pinned: bool,
    /// The device it runs on, once loaded.
    pub device: Option<ResolvedDevice>,
    /// What it computes (embeddings, reranking, classification, sparse vectors), once loaded.
    pub kind: Option<ModelKind>,
}

/// A snapshot of the pool.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// Models in the pool, least recently used first.
    pub models: Vec<ModelStatus>,
    /// The slot limit.
    pub max_models: usize,
    /// The memory budget, if any.
    pub memory_budget: Option<u64>,
    /// Weight bytes on devices (warm models not included): what the memory budget counts.
    pub weight_bytes: u64,
    /// Host bytes the warm tier holds.
    pub host_bytes: u64,
    /// The warm tier's host budget (0 when the tier is off).
    pub host_budget: u64,
    /// Whether the warm tier is on, or why it is off.
    pub warm_tier: WarmTierStatus,
    /// The memory-pressure level of each CUDA device the pool's models use, from the driver's
    /// free memory now.
    pub pressure: Vec<DevicePressure>,
    /// Sum of the models' leases.
    pub leases: usize,
    /// True once [`crate::Pool::close`] was called.
    pub closed: bool,
}

/// Whether the warm tier is on ([`PoolStatus::warm_tier`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmTierStatus {
    /// True when evicted models can go warm.
    pub enabled: bool,
    /// What it applies to, or why it is off.
    pub note: String,
}

/// One device's memory pressure ([`PoolStatus::pressure`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct DevicePressure {
    /// The CUDA device index.
    pub device: usize,
    /// The level at the configured thresholds.
    pub level: crate::PressureLevel,
    /// Free bytes the driver reports.
    pub free: u64,
    /// The device's total memory.
    pub total: u64,
}

impl PoolStatus {
    /// The entry for `name`.
    pub fn model(&self, name: &str) -> Option<&ModelStatus> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// Evictions by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EvictionCounts {
    /// See [`EvictionCause::Capacity`].
    pub capacity: u64,
    /// See [`EvictionCause::Memory`].
    pub memory: u64,
    /// See [`EvictionCause::Ttl`].
    pub ttl: u64,
    /// See [`EvictionCause::Pressure`].
    pub pressure: u64,
    /// See [`EvictionCause::Explicit`].
    pub explicit: u64,
}

impl EvictionCounts {
    /// The count for `cause`.
    pub fn get(&self, cause: EvictionCause) -> u64 {
        let mut counts = *self;
        *counts.count_mut(cause)
    }

    /// Counts one more eviction for `cause`.
    pub(crate) fn bump(&mut self, cause: EvictionCause) {
        *self.count_mut(cause) += 1;
    }

    /// The one place that maps a cause to its field.
    fn count_mut(&mut self, cause: EvictionCause) -> &mut u64 {
        match cause {
            EvictionCause::Capacity => &mut self.capacity,
            EvictionCause::Memory => &mut self.memory,
            EvictionCause::Ttl => &mut self.ttl,
            EvictionCause::Pressure => &mut self.pressure,
            EvictionCause::Explicit => &mut self.explicit,
        }
    }

    /// All evictions.
    pub fn total(&self) -> u64 {
        self.capacity + self.memory + self.ttl + self.pressure + self.explicit
    }
}

/// Counters since the pool was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Leases served by a model that was already loaded.
    pub hits: u64,
    /// `get`s that found the model not loaded and waited for a load (their own or one already
    /// in flight), whether or not it succeeded.
    pub misses: u64,
    /// Successful loads.
    pub loads: u64,
    /// Failed loads (errors, timeouts, panics).
    pub load_failures: u64,
    /// Models taken off their device (offloaded to the warm tier or unloaded), and warm models
    /// unloaded, by cause.
    pub evictions: EvictionCounts,
    /// Models offloaded to the warm tier.
    pub offloads: u64,
    /// Offloads that failed (the model was unloaded instead).
    pub offload_failures: u64,
    /// Warm models restored to their device.
    pub restores: u64,
    /// Restores that failed (the model stayed warm, or was released if its service died).
    pub restore_failures: u64,
    /// `get` calls that waited for a lease to end because the pool was full.
    pub capacity_waits: u64,
    /// Total time spent in those waits.
    pub capacity_wait_time: Duration,
    /// `get` calls that failed with [`crate::PoolError::Exhausted`].
    pub exhausted: u64,
}
