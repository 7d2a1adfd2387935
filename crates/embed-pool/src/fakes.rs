//! Fake services and loaders for the crate's unit tests: exact byte counts, panics, services
//! that die.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use embed_core::{CleanupReport, EmbedOptions, EmbeddingService, Embeddings, ModelInfo, ModelSpec, ServiceState, TokenizedText};

use crate::ModelLoader;

pub(crate) struct FakeService {
    info: ModelInfo,
    state: Mutex<ServiceState>,
}

#[async_trait]
impl EmbeddingService for FakeService {
    async fn load(&self, _spec: ModelSpec) -> embed_core::Result<ModelInfo> {
        Err(embed_core::Error::AlreadyLoaded { state: self.state() })
    }
    async fn embed_texts(&self, _texts: &[String], _o: &EmbedOptions) -> embed_core::Result<Embeddings> {
        Ok(Embeddings::default())
    }
    async fn tokenize(&self, _texts: &[String], _o: &EmbedOptions) -> embed_core::Result<Vec<TokenizedText>> {
        Ok(Vec::new())
    }
    fn info(&self) -> Option<ModelInfo> {
        Some(self.info.clone())
    }
    fn state(&self) -> ServiceState {
        *self.state.lock().unwrap()
    }
    async fn cleanup(&self) -> embed_core::Result<CleanupReport> {
        self.begin_cleanup();
        Ok(CleanupReport { model: Some(self.info.name.clone()), ..Default::default() })
    }
    fn begin_cleanup(&self) -> bool {
        std::mem::replace(&mut *self.state.lock().unwrap(), ServiceState::Closed) == ServiceState::Ready
    }
}

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

/// A ready fake model of `bytes` weight bytes.
pub(crate) fn service(name: &str, source: &str, bytes: u64) -> Arc<FakeService> {
    let info = ModelInfo { dimension: 4, max_seq_length: 8, normalize: true, vocab_size: 10, ..ModelInfo::fake(name, source, 4, bytes) };
    Arc::new(FakeService { info, state: Mutex::new(ServiceState::Ready) })
}
