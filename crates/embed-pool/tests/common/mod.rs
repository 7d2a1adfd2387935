//! Helpers shared by the integration tests (each test binary uses a subset).
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use embed_core::{EmbeddingService, ModelSpec};
use embed_pool::{DenseLoader, ModelLoader, ModelRegistry};
use embed_testkit::TinyModel;
use tempfile::TempDir;

/// `n` distinct tiny models, registered as `m0`, `m1`, ...
pub struct TinyModels {
    pub dirs: Vec<(TempDir, PathBuf)>,
}

impl TinyModels {
    pub fn new(n: usize) -> Self {
        TinyModels { dirs: (0..n).map(|i| TinyModel { seed: 100 + i as i64, ..Default::default() }.write_temp()).collect() }
    }

    pub fn name(i: usize) -> String {
        format!("m{i}")
    }

    pub fn spec(&self, i: usize) -> ModelSpec {
        ModelSpec::new(self.dirs[i].1.to_string_lossy())
    }

    pub fn registry(&self) -> ModelRegistry {
        (0..self.dirs.len()).fold(ModelRegistry::new(), |r, i| r.with(Self::name(i), self.spec(i)))
    }
}

/// The default loader, counting its calls, optionally slowed down to widen race windows.
#[derive(Default)]
pub struct CountingLoader {
    pub calls: AtomicUsize,
    pub delay: Duration,
}

impl CountingLoader {
    pub fn with_delay(delay: Duration) -> Arc<Self> {
        Arc::new(CountingLoader { calls: AtomicUsize::new(0), delay })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ModelLoader for CountingLoader {
    async fn load(&self, spec: &ModelSpec) -> Result<Arc<dyn EmbeddingService>, embed_core::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        DenseLoader.load(spec).await
    }
}
