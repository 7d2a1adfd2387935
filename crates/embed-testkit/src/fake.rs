//! A fake embedding service with live-instance accounting, for testing lifetimes without
//! libtorch in the loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use embed_core::{
    CleanupReport, EmbedOptions, EmbeddingService, Embeddings, Error, ModelInfo,
    ModelSpec, ServiceState, TokenizedText,
};

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Fake services currently holding a "model" (loaded and not yet cleaned), process-wide.
pub fn live_fakes() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// Loads instantly (or after `load_delay`), embeds each text into a deterministic vector
/// derived from its bytes, and counts itself in [`live_fakes`] while loaded. A spec whose
/// source is `"fail"` fails to load.
#[derive(Debug)]
pub struct FakeService {
    dim: usize,
    load_delay: Duration,
    state: Mutex<(ServiceState, Option<ModelInfo>)>,
}

impl FakeService {
    /// A fake producing `dim`-dimensional vectors.
    pub fn new(dim: usize) -> Self {
        FakeService { dim, load_delay: Duration::ZERO, state: Mutex::new((ServiceState::Unloaded, None)) }
    }

    /// Makes `load` take `delay` (to widen cancellation windows).
    pub fn with_load_delay(mut self, delay: Duration) -> Self {
        self.load_delay = delay;
        self
    }

    fn release(&self) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.0 == ServiceState::Ready {
            *st = (ServiceState::Closed, None);
            LIVE.fetch_sub(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    fn vector(&self, text: &str) -> Vec<f32> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        (0..self.dim)
            .map(|i| {
                for b in text.bytes().chain([i as u8]) {
                    h ^= b as u64;
                    h = h.wrapping_mul(0x100_0000_01b3);
                }
                ((h >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }
}

#[async_trait]
impl EmbeddingService for FakeService {
    async fn load(&self, spec: ModelSpec) -> Result<ModelInfo, Error> {
        {
            let mut st = self.state.lock().unwrap();
            if matches!(st.0, ServiceState::Ready | ServiceState::Loading) {
                return Err(Error::AlreadyLoaded { state: st.0 });
            }
            st.0 = ServiceState::Loading;
        }
        if !self.load_delay.is_zero() {
            tokio::time::sleep(self.load_delay).await;
        }
        let mut st = self.state.lock().unwrap();
        if spec.source == "fail" {
            st.0 = ServiceState::Unloaded;
            return Err(Error::InvalidSource { source_str: spec.source, reason: "the fake was told to fail".into() });
        }
        let info = ModelInfo {
            name: spec.name.clone(),
            source: spec.source.clone(),
            dir: std::path::PathBuf::new(),
            architecture: "fake".into(),
            dimension: self.dim,
            max_seq_length: 512,
            pooling: embed_core::Pooling::Mean,
            normalize: false,
            device: embed_core::ResolvedDevice::Cpu,
            device_note: None,
            dtype: embed_core::DType::F32,
            weight_bytes: (self.dim * 4) as u64,
            num_layers: 0,
            vocab_size: 256,
            prompts: Default::default(),
            load_duration: self.load_delay,
            threads: 1,
        };
        *st = (ServiceState::Ready, Some(info.clone()));
        LIVE.fetch_add(1, Ordering::SeqCst);
        Ok(info)
    }

    async fn embed_texts(&self, texts: &[String], _options: &EmbedOptions) -> Result<Embeddings, Error> {
        let state = self.state();
        if state != ServiceState::Ready {
            return Err(Error::NotReady { state });
        }
        Ok(Embeddings {
            vectors: texts.iter().map(|t| self.vector(t)).collect(),
            token_counts: texts.iter().map(|t| t.len() + 2).collect(),
            truncated: vec![false; texts.len()],
        })
    }

    async fn tokenize(&self, texts: &[String], _options: &EmbedOptions) -> Result<Vec<TokenizedText>, Error> {
        Ok(texts
            .iter()
            .map(|t| TokenizedText { ids: t.bytes().map(u32::from).collect(), tokens: t.chars().map(String::from).collect(), truncated: false })
            .collect())
    }

    fn info(&self) -> Option<ModelInfo> {
        self.state.lock().unwrap().1.clone()
    }

    fn state(&self) -> ServiceState {
        self.state.lock().unwrap().0
    }

    async fn cleanup(&self) -> Result<CleanupReport, Error> {
        let bytes = self.info().map(|i| i.weight_bytes).unwrap_or(0);
        let released = self.release();
        Ok(CleanupReport { weight_bytes_freed: if released { bytes } else { 0 }, ..Default::default() })
    }

    fn begin_cleanup(&self) -> bool {
        self.release()
    }
}

impl Drop for FakeService {
    fn drop(&mut self) {
        self.release();
    }
}
