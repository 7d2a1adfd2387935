//! Bodies of the admin and status routes. Fields that are unknown until a model has been loaded
//! are `null`, never left out, so clients can read every key unconditionally.

use embed_core::{ModelInfo, ModelKind};
use embed_pool::{ModelRegistry, ModelStatus, PoolEvent, PoolStatus};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// `GET /models` answer: what is loaded, what could be, and the pool's limits.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Models {
    loaded: Vec<LoadedModel>,
    registered: Vec<RegistryEntry>,
    max_models: usize,
    /// Bytes of weights the pool may hold on devices; `null` when unlimited.
    memory_budget: Option<u64>,
    /// Weight bytes on devices (what the budget counts; warm models not included).
    weight_bytes: u64,
    warm_tier: WarmTierBody,
    /// Memory-pressure level of each CUDA device the models use.
    pressure: Vec<PressureBody>,
}

/// The warm tier in `/models`: on or off (and why), its host budget and what it holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct WarmTierBody {
    enabled: bool,
    note: String,
    /// Host bytes it may hold (0 when off).
    host_budget: u64,
    /// Host bytes the warm models' weights hold.
    host_bytes: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PressureBody {
    device: String,
    /// `low`, `moderate`, `high` or `critical`.
    level: &'static str,
    free_bytes: u64,
    total_bytes: u64,
}

impl Models {
    /// The pool's `status` with `info` from each model's last load, at `now`.
    pub(crate) fn new(status: PoolStatus, registry: &ModelRegistry, info: impl Fn(&str) -> Option<ModelInfo>, now: Instant) -> Self {
        let loaded = status.models.into_iter().map(|m| LoadedModel::new(info(&m.name), m, now)).collect();
        let registered = registry
            .names()
            .map(|n| {
                let r = registry.get(n).expect("name from the registry");
                RegistryEntry {
                    name: n.to_string(),
                    source: crate::api::public_source(&r.spec.source, n),
                    device: r.spec.options.device.to_string(),
                    dtype: r.spec.options.dtype.map_or_else(|| "auto".to_string(), |d| d.to_string()),
                }
            })
            .collect();
        Models {
            loaded,
            registered,
            max_models: status.max_models,
            memory_budget: status.memory_budget,
            weight_bytes: status.weight_bytes,
            warm_tier: WarmTierBody {
                enabled: status.warm_tier.enabled,
                note: status.warm_tier.note,
                host_budget: status.host_budget,
                host_bytes: status.host_bytes,
            },
            pressure: status
                .pressure
                .iter()
                .map(|p| PressureBody { device: format!("cuda:{}", p.device), level: p.level.as_str(), free_bytes: p.free, total_bytes: p.total })
                .collect(),
        }
    }
}

/// A model in the pool (loading, ready or on its way out).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct LoadedModel {
    name: String,
    architecture: Option<String>,
    family: Option<String>,
    /// What it computes: `embedding`, `reranker`, `classifier` or `sparse` (once loaded).
    #[schema(value_type = Option<String>)]
    kind: Option<ModelKind>,
    dimension: Option<usize>,
    /// The pool's `ModelState`: `loading`, `ready`, `draining`, `offloading`, `warm` or
    /// `restoring`.
    state: &'static str,
    /// Its weight bytes, wherever they are.
    weight_bytes: u64,
    /// Where its weights are now: on its device, or in host memory (warm).
    device_bytes: u64,
    host_bytes: u64,
    leases: usize,
    pinned: bool,
    device: Option<String>,
    /// The dtype it really runs in (`auto` resolved).
    dtype: Option<String>,
    /// For a model loaded by hub id, the commit its revision resolved to (as `/info`'s
    /// `model_sha`).
    model_sha: Option<String>,
    idle_seconds: f64,
}

impl LoadedModel {
    fn new(info: Option<ModelInfo>, m: ModelStatus, now: Instant) -> Self {
        LoadedModel {
            architecture: info.as_ref().map(|i| i.architecture.clone()),
            family: info.as_ref().map(|i| i.family.to_string()),
            kind: m.kind,
            dimension: info.as_ref().map(|i| i.dimension),
            dtype: info.as_ref().map(|i| i.dtype.to_string()),
            model_sha: info.as_ref().and_then(|i| embed_core::hub_commit(&i.dir)),
            state: m.state.as_str(),
            device: m.device.map(|d| d.to_string()),
            idle_seconds: now.saturating_duration_since(m.last_used).as_secs_f64(),
            name: m.name,
            weight_bytes: m.weight_bytes,
            device_bytes: m.device_bytes,
            host_bytes: m.host_bytes,
            leases: m.leases,
            pinned: m.pinned,
        }
    }
}

/// A model the server may load: its registry entry as configured (`dtype` may be `auto`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RegistryEntry {
    name: String,
    /// The hub id it loads from, or for a local directory its name (no host paths).
    source: String,
    device: String,
    dtype: String,
}

/// `POST /models/{name}/load` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Loaded {
    pub(crate) model: String,
    /// Always true: a failed load answers with an error instead.
    pub(crate) loaded: bool,
}

/// `POST /models/{name}/unload` query string.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct UnloadQuery {
    /// Fail with 409 instead of waiting for leases to end.
    #[serde(default)]
    pub(crate) force_fail_if_leased: bool,
}

/// `POST /models/{name}/unload` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Unloaded {
    pub(crate) model: String,
    /// False when the model was not loaded.
    pub(crate) unloaded: bool,
    /// Bytes of weights freed (0 when nothing was unloaded).
    pub(crate) model_weight_bytes: u64,
}

/// `POST /models/{name}/offload` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Offloaded {
    pub(crate) model: String,
    /// False when there was nothing to move (not loaded, or warm already).
    pub(crate) offloaded: bool,
    /// Host bytes its warm copy holds (0 when it is not warm).
    pub(crate) host_bytes: u64,
}

/// `GET /health` and `GET /ready` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ServerStatus {
    pub(crate) status: &'static str,
    /// Why the server is not ready; absent when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<&'static str>,
}

/// `GET /models/events` answer: the pool's recent history, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Events {
    events: Vec<Event>,
}

/// One pool event. `action` is `loaded`, `load_failed`, `offloaded`, `restored`,
/// `restore_failed` or `unloaded`; `cause` is `capacity`, `memory`, `ttl`, `pressure` or
/// `explicit` for offloads and releases, null otherwise; `at` is Unix time in seconds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Event {
    model: String,
    action: &'static str,
    cause: Option<&'static str>,
    weight_bytes: u64,
    at: f64,
    duration_ms: f64,
}

impl Events {
    pub(crate) fn new(history: Vec<PoolEvent>) -> Self {
        let events = history
            .into_iter()
            .map(|e| Event {
                action: e.action.as_str(),
                cause: e.cause.map(|c| c.as_str()),
                weight_bytes: e.weight_bytes,
                at: e.at.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                duration_ms: e.duration.as_secs_f64() * 1000.0,
                model: e.model,
            })
            .collect();
        Events { events }
    }
}
