//! Which names the pool may load, and how.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use embed_core::ModelSpec;

/// Per-model pool settings.
///
/// ```
/// use std::time::Duration;
/// let s = embed_pool::ModelSettings::default().with_ttl(Duration::from_secs(600));
/// assert!(!s.pinned);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelSettings {
    /// Idle time after which the model is unloaded; `None` uses [`crate::PoolConfig::default_ttl`].
    pub ttl: Option<Duration>,
    /// A pinned model is never evicted, neither for room nor for idleness; only
    /// [`crate::Pool::unload`] and [`crate::Pool::close`] release it. It still takes a slot.
    pub pinned: bool,
    /// Expected weight bytes, used by the memory budget before the model has been loaded once
    /// (afterwards the pool uses the size it reported). Without a hint the size of the
    /// directory's `model.safetensors` is used, or 0 for hub ids.
    pub weight_bytes_hint: Option<u64>,
}

impl ModelSettings {
    /// Sets [`ModelSettings::ttl`].
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets [`ModelSettings::pinned`].
    pub fn with_pinned(mut self, pinned: bool) -> Self {
        self.pinned = pinned;
        self
    }

    /// Sets [`ModelSettings::weight_bytes_hint`].
    pub fn with_weight_bytes_hint(mut self, bytes: u64) -> Self {
        self.weight_bytes_hint = Some(bytes);
        self
    }
}

/// A registered model: what to load and how the pool treats it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RegisteredModel {
    /// Source and options; its `name` is set to the registry name.
    pub spec: ModelSpec,
    /// Pool settings.
    pub settings: ModelSettings,
}

/// Names the pool may load, each mapped to a [`ModelSpec`] and its [`ModelSettings`].
///
/// ```
/// use embed_core::ModelSpec;
/// use embed_pool::{ModelRegistry, ModelSettings};
///
/// let registry = ModelRegistry::new()
///     .with("minilm", ModelSpec::new("sentence-transformers/all-MiniLM-L6-v2"))
///     .with_settings("bge", ModelSpec::new("BAAI/bge-small-en-v1.5"), ModelSettings::default().with_pinned(true));
/// assert!(registry.contains("minilm"));
/// assert_eq!(registry.names().collect::<Vec<_>>(), ["bge", "minilm"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ModelRegistry {
    models: BTreeMap<String, Arc<RegisteredModel>>,
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `name` with default settings.
    pub fn with(self, name: impl Into<String>, spec: ModelSpec) -> Self {
        self.with_settings(name, spec, ModelSettings::default())
    }

    /// Adds (or replaces) `name` with `settings`.
    pub fn with_settings(mut self, name: impl Into<String>, spec: ModelSpec, settings: ModelSettings) -> Self {
        self.insert(name, spec, settings);
        self
    }

    /// Adds (or replaces) `name`. A loaded model keeps its old spec until it is next loaded.
    pub fn insert(&mut self, name: impl Into<String>, spec: ModelSpec, settings: ModelSettings) {
        let name = name.into();
        let spec = spec.named(name.clone());
        self.models.insert(name, Arc::new(RegisteredModel { spec, settings }));
    }

    /// Removes `name`; returns whether it was registered.
    pub fn remove(&mut self, name: &str) -> bool {
        self.models.remove(name).is_some()
    }

    /// The entry for `name`.
    pub fn get(&self, name: &str) -> Option<&RegisteredModel> {
        self.models.get(name).map(|m| &**m)
    }

    pub(crate) fn get_shared(&self, name: &str) -> Option<Arc<RegisteredModel>> {
        self.models.get(name).cloned()
    }

    /// True when `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// Number of registered models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// True when some model has its own TTL.
    pub(crate) fn any_ttl(&self) -> bool {
        self.models.values().any(|m| m.settings.ttl.is_some())
    }
}
