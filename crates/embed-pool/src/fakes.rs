//! The fake loader of the crate's unit tests: exact byte counts, panics on demand; the
//! services it hands out are embed-testkit's fakes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use embed_core::{EmbeddingService, ModelSpec};
use embed_testkit::FakeService;

use crate::ModelLoader;

/// Loads fake models whose weight bytes are `bytes[name]`; panics for `panic_on`.
#[derive(Default)]
pub(crate) struct FakeLoader {
    pub(crate) bytes: HashMap<String, u64>,
    pub(crate) panic_on: Option<String>,
    pub(crate) calls: AtomicUsize,
}

#[async_trait]
impl ModelLoader for FakeLoader {
    async fn load(&self, spec: &ModelSpec) -> Result<Arc<dyn EmbeddingService>, embed_core::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        assert_ne!(self.panic_on.as_deref(), Some(spec.name.as_str()), "fake loader told to panic");
        let bytes = self.bytes.get(&spec.name).copied().unwrap_or(1);
        Ok(service(&spec.name, &spec.source, bytes))
    }
}

/// A ready fake model of `bytes` weight bytes (embed-testkit's fake, loaded at once).
pub(crate) fn service(name: &str, source: &str, bytes: u64) -> Arc<FakeService> {
    Arc::new(FakeService::ready(name, source, 4, bytes))
}
