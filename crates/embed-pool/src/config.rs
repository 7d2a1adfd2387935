//! Pool-wide settings.

use std::time::Duration;

use embed_core::ModelOptions;

/// Settings of a [`crate::Pool`]: capacity and memory, the [`PoolTimeouts`], idle unloading,
/// and which names may load. Build it with the `with_*` methods:
///
/// ```
/// use std::time::Duration;
/// use embed_pool::{PoolConfig, PoolTimeouts};
/// let config = PoolConfig::default()
///     .with_max_models(2)
///     .with_memory_budget(Some(2 << 30))
///     .with_timeouts(PoolTimeouts { wait: Duration::from_secs(5), ..PoolTimeouts::default() });
/// assert_eq!((config.max_models, config.timeouts.wait), (2, Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Most models loaded (or loading, or being released) at once. At least 1. Default 4.
    pub max_models: usize,
    /// Most weight bytes held by the pool's models (as `ModelInfo::weight_bytes` reports them).
    /// With a budget, a model on CUDA also needs that much free memory on its device. Default: none.
    pub memory_budget: Option<u64>,
    /// How long the pool waits, for each thing it waits for.
    pub timeouts: PoolTimeouts,
    /// Idle time after which an unleased, unpinned model is unloaded, unless its registry
    /// entry says otherwise. Default: none (models stay until evicted).
    pub default_ttl: Option<Duration>,
    /// How often the background task unloads expired models (only started when some TTL is
    /// set and the pool was created inside a tokio runtime). `None` disables it; call
    /// [`crate::Pool::evict_expired`] yourself then. Default 1 s.
    pub maintenance_interval: Option<Duration>,
    /// When true, a name that is not registered is loaded as a model source (a local directory
    /// or a hub id, see [`embed_core::ModelSource::parse`]) with [`PoolConfig::default_options`].
    /// Off by default: only registered names load, so client-supplied names cannot reach the
    /// file system.
    pub allow_arbitrary_sources: bool,
    /// Options for models loaded from arbitrary sources.
    pub default_options: ModelOptions,
    /// Events kept by [`crate::Pool::history`] (the newest; 0 keeps none). Default 256.
    pub history_len: usize,
    /// The warm tier: where models evicted from the device go before they are unloaded.
    pub warm: WarmTier,
    /// Memory-pressure levels of the CUDA devices, and what the pool does at each.
    pub pressure: Pressure,
}

/// When the pool keeps an evicted model warm: its weights in host memory (pinned), tokenizer,
/// config and worker kept, nothing on the device. A `get` restores it, much faster than a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WarmMode {
    /// CUDA models only (a CPU model's weights are in host memory already: nothing to gain).
    #[default]
    Auto,
    /// Never: an evicted model is unloaded.
    Off,
    /// CPU models too. Gains nothing on a CPU; tests and the leak check use it to run the
    /// warm tier's code on machines without a GPU.
    Always,
}

/// How much host memory the warm tier may hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HostBudget {
    /// Bytes.
    Bytes(u64),
    /// A fraction of the machine's RAM (`MemTotal`), e.g. 0.25.
    FractionOfRam(f64),
}

impl HostBudget {
    /// The budget in bytes on this machine.
    pub fn bytes(self) -> u64 {
        match self {
            HostBudget::Bytes(b) => b,
            HostBudget::FractionOfRam(f) => (embed_core::memory::total_ram_bytes() as f64 * f.clamp(0.0, 1.0)) as u64,
        }
    }
}

/// The warm tier's settings ([`PoolConfig::warm`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmTier {
    /// When it applies. Default [`WarmMode::Auto`].
    pub mode: WarmMode,
    /// Host memory it may hold; the least recently used warm model is unloaded to make room.
    /// Default: a quarter of the RAM.
    pub host_budget: HostBudget,
}

impl Default for WarmTier {
    fn default() -> Self {
        WarmTier { mode: WarmMode::Auto, host_budget: HostBudget::FractionOfRam(0.25) }
    }
}

/// Memory-pressure thresholds, as fractions of a CUDA device's memory in use (by anyone, from
/// the driver's free-memory figure). At `high` and above, idle models on the device are
/// offloaded to the warm tier (least recently used first) until use is back under `moderate`;
/// at `critical` they are unloaded instead. Leased and pinned models are never touched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    /// Start of the moderate level. Default 0.75.
    pub moderate: f64,
    /// Start of the high level. Default 0.90.
    pub high: f64,
    /// Start of the critical level. Default 0.97.
    pub critical: f64,
    /// How often the background check runs (while some model is on a CUDA device). `None`
    /// disables it; [`crate::Pool::relieve_pressure`] runs one check. Default 1 s.
    pub interval: Option<Duration>,
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure { moderate: 0.75, high: 0.90, critical: 0.97, interval: Some(Duration::from_secs(1)) }
    }
}

/// A device's memory-pressure level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PressureLevel {
    /// Below `moderate`.
    Low,
    /// Between `moderate` and `high`.
    Moderate,
    /// Between `high` and `critical`: idle models are offloaded.
    High,
    /// At `critical` or above: idle models are unloaded.
    Critical,
}

impl PressureLevel {
    /// `low`, `moderate`, `high` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            PressureLevel::Low => "low",
            PressureLevel::Moderate => "moderate",
            PressureLevel::High => "high",
            PressureLevel::Critical => "critical",
        }
    }

    /// 0 to 3, for a metrics gauge.
    pub fn as_number(self) -> u8 {
        self as u8
    }
}

impl Pressure {
    /// The level of a device with `free` of `total` bytes free.
    pub fn level(&self, free: u64, total: u64) -> PressureLevel {
        if total == 0 {
            return PressureLevel::Low;
        }
        let used = 1.0 - free.min(total) as f64 / total as f64;
        if used >= self.critical {
            PressureLevel::Critical
        } else if used >= self.high {
            PressureLevel::High
        } else if used >= self.moderate {
            PressureLevel::Moderate
        } else {
            PressureLevel::Low
        }
    }
}

/// How long a [`crate::Pool`] waits, one field per wait (grouped as deadpool groups its
/// timeouts). Change the ones you need, `..PoolTimeouts::default()` for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTimeouts {
    /// How long `get` waits for a lease to end when the pool is full before failing with
    /// [`crate::PoolError::Exhausted`]. Default 30 s.
    pub wait: Duration,
    /// Longest a model load may take before it is abandoned ([`crate::PoolError::LoadTimeout`]).
    /// Default: no limit.
    pub load: Option<Duration>,
    /// How long [`crate::Pool::close`] waits for leases to end before releasing their models
    /// anyway. Default 30 s.
    pub close: Duration,
    /// After an eviction under a memory budget, how long to wait for the released memory to show
    /// up in `embed_core::memory` figures before loading the next model anyway. Default 10 s.
    pub memory_release: Duration,
}

impl Default for PoolTimeouts {
    fn default() -> Self {
        PoolTimeouts { wait: Duration::from_secs(30), load: None, close: Duration::from_secs(30), memory_release: Duration::from_secs(10) }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_models: 4,
            memory_budget: None,
            timeouts: PoolTimeouts::default(),
            default_ttl: None,
            maintenance_interval: Some(Duration::from_secs(1)),
            allow_arbitrary_sources: false,
            default_options: ModelOptions::default(),
            history_len: 256,
            warm: WarmTier::default(),
            pressure: Pressure::default(),
        }
    }
}

impl PoolConfig {
    /// Sets [`PoolConfig::max_models`] (values below 1 mean 1).
    pub fn with_max_models(mut self, n: usize) -> Self {
        self.max_models = n.max(1);
        self
    }

    /// Sets [`PoolConfig::memory_budget`].
    pub fn with_memory_budget(mut self, bytes: Option<u64>) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// Sets [`PoolConfig::timeouts`].
    pub fn with_timeouts(mut self, timeouts: PoolTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Sets [`PoolConfig::default_ttl`].
    pub fn with_default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Sets [`PoolConfig::maintenance_interval`].
    pub fn with_maintenance_interval(mut self, interval: Option<Duration>) -> Self {
        self.maintenance_interval = interval;
        self
    }

    /// Sets [`PoolConfig::allow_arbitrary_sources`].
    pub fn with_arbitrary_sources(mut self, allow: bool) -> Self {
        self.allow_arbitrary_sources = allow;
        self
    }

    /// Sets [`PoolConfig::history_len`].
    pub fn with_history_len(mut self, n: usize) -> Self {
        self.history_len = n;
        self
    }

    /// Sets [`PoolConfig::warm`].
    pub fn with_warm_tier(mut self, warm: WarmTier) -> Self {
        self.warm = warm;
        self
    }

    /// Sets [`PoolConfig::pressure`].
    pub fn with_pressure(mut self, pressure: Pressure) -> Self {
        self.pressure = pressure;
        self
    }

    /// Sets [`PoolConfig::default_options`].
    pub fn with_default_options(mut self, options: ModelOptions) -> Self {
        self.default_options = options;
        self
    }
}
