//! A fake embedding service with live-instance accounting, for testing lifetimes without
//! libtorch in the loop.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use embed_core::{
    CleanupReport, EmbedOptions, EmbeddingService, Embeddings, Error, ModelInfo, ModelSpec, MoveReport, Offload, Residency,
    ResolvedDevice, ServiceState, TokenizedText,
};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static DROPPED_LIVE: AtomicUsize = AtomicUsize::new(0);

/// Fake services currently holding a "model" (from the start of a load until cleanup, a failed
/// load or a cancelled load), process-wide.
pub fn live_fakes() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// Fake services that were dropped while still holding their model, process-wide. Their `Drop`
/// releases the model as the real service's does, so [`live_fakes`] alone cannot tell a caller
/// that cleaned up from one that left it to `Drop`; this count can: a caller that promises
/// cleanup (a scope, a guard) must keep it unchanged.
pub fn fakes_dropped_while_live() -> usize {
    DROPPED_LIVE.load(Ordering::SeqCst)
}

#[derive(Debug)]
struct Inner {
    state: ServiceState,
    info: Option<ModelInfo>,
    /// The "model": counted in [`LIVE`] while true.
    holding: bool,
}

/// Loads instantly (or after `load_delay`), embeds each text into a deterministic vector
/// derived from its bytes, and counts itself in [`live_fakes`] from the start of a load until
/// the model is released. A spec whose source is `"fail"` fails to load (after the delay).
/// A load whose future is dropped releases what it holds, as the real service's does.
#[derive(Debug)]
pub struct FakeService {
    dim: usize,
    load_delay: Duration,
    inner: Mutex<Inner>,
    /// The "weights" are offloaded (see [`FakeService::moves`]).
    on_host: AtomicBool,
    offloads: AtomicU64,
    restores: AtomicU64,
    /// Requests that arrived while offloaded (a pool must restore a model before leasing it).
    requests_on_host: AtomicU64,
    fail_moves: AtomicBool,
}

static HOST_BYTES: AtomicU64 = AtomicU64::new(0);

/// Bytes held by offloaded fakes ("host copies" of their weight bytes), process-wide.
pub fn fake_host_bytes() -> u64 {
    HOST_BYTES.load(Ordering::SeqCst)
}

impl FakeService {
    /// A fake producing `dim`-dimensional vectors.
    pub fn new(dim: usize) -> Self {
        Self::with_inner(dim, Inner { state: ServiceState::Unloaded, info: None, holding: false })
    }

    fn with_inner(dim: usize, inner: Inner) -> Self {
        FakeService {
            dim,
            load_delay: Duration::ZERO,
            inner: Mutex::new(inner),
            on_host: AtomicBool::new(false),
            offloads: AtomicU64::new(0),
            restores: AtomicU64::new(0),
            requests_on_host: AtomicU64::new(0),
            fail_moves: AtomicBool::new(false),
        }
    }

    /// A fake that is already loaded (no `load` call, no runtime needed): `name` from `source`,
    /// `dim`-dimensional vectors, `weight_bytes` as its model's size. It counts in
    /// [`live_fakes`] until cleaned up or dropped, like a loaded one.
    pub fn ready(name: &str, source: &str, dim: usize, weight_bytes: u64) -> Self {
        LIVE.fetch_add(1, Ordering::SeqCst);
        let info = ModelInfo::fake(name, source, dim, weight_bytes);
        Self::with_inner(dim, Inner { state: ServiceState::Ready, info: Some(info), holding: true })
    }

    /// Reports `device` as the model's device (a loaded fake says CPU).
    pub fn on_device(self, device: ResolvedDevice) -> Self {
        if let Some(info) = self.lock().info.as_mut() {
            info.device = device;
        }
        self
    }

    /// Offloads and restores since creation, and requests that arrived while offloaded.
    pub fn moves(&self) -> (u64, u64, u64) {
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        (get(&self.offloads), get(&self.restores), get(&self.requests_on_host))
    }

    /// Makes `offload` and `restore` fail (as a full host or device would).
    pub fn fail_moves(&self, fail: bool) {
        self.fail_moves.store(fail, Ordering::SeqCst);
    }

    fn weight_bytes(&self) -> u64 {
        self.lock().info.as_ref().map_or(0, |i| i.weight_bytes)
    }

    fn go(&self, to: Residency) -> Result<MoveReport, Error> {
        let state = self.state();
        if state != ServiceState::Ready {
            return Err(Error::NotReady { state });
        }
        let bytes = self.weight_bytes();
        let to_host = to == Residency::Host;
        let moved = self.on_host.load(Ordering::SeqCst) != to_host;
        if moved && self.fail_moves.load(Ordering::SeqCst) {
            return Err(Error::Inference { model: "fake".into(), message: "the fake was told to fail moves".into() });
        }
        if moved {
            self.on_host.store(to_host, Ordering::SeqCst);
            if to_host {
                HOST_BYTES.fetch_add(bytes, Ordering::SeqCst);
                self.offloads.fetch_add(1, Ordering::SeqCst);
            } else {
                HOST_BYTES.fetch_sub(bytes, Ordering::SeqCst);
                self.restores.fetch_add(1, Ordering::SeqCst);
            }
        }
        let b = if moved { bytes } else { 0 };
        Ok(MoveReport { residency: to, moved, tensor_bytes: b, host_bytes: b, duration: Duration::ZERO })
    }

    /// Makes `load` take `delay` (to widen cancellation windows); the fake holds its model
    /// (counts in [`live_fakes`]) for the whole delay.
    pub fn with_load_delay(mut self, delay: Duration) -> Self {
        self.load_delay = delay;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the model if held and moves to `next`; true if a model was released.
    fn release(&self, next: ServiceState) -> bool {
        let mut st = self.lock();
        if !st.holding {
            return false;
        }
        let bytes = st.info.as_ref().map_or(0, |i| i.weight_bytes);
        *st = Inner { state: next, info: None, holding: false };
        LIVE.fetch_sub(1, Ordering::SeqCst);
        if self.on_host.swap(false, Ordering::SeqCst) {
            HOST_BYTES.fetch_sub(bytes, Ordering::SeqCst);
        }
        true
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
            let mut st = self.lock();
            if matches!(st.state, ServiceState::Ready | ServiceState::Loading) {
                return Err(Error::AlreadyLoaded { state: st.state });
            }
            // The model is held from here on, delay included, so that a cancellation during
            // the delay has something to release.
            *st = Inner { state: ServiceState::Loading, info: None, holding: true };
            LIVE.fetch_add(1, Ordering::SeqCst);
        }
        // Releases the model if this future is dropped half-way (or the load fails).
        let guard = scopeguard::guard(self, |fake| {
            fake.release(ServiceState::Unloaded);
        });
        if !self.load_delay.is_zero() {
            tokio::time::sleep(self.load_delay).await;
        }
        if spec.source == "fail" {
            // The guard releases the model and leaves the fake unloaded.
            return Err(Error::InvalidSource { source_str: spec.source, reason: "the fake was told to fail".into() });
        }
        let mut info = ModelInfo::fake(&spec.name, &spec.source, self.dim, (self.dim * 4) as u64);
        info.dir = std::path::PathBuf::new();
        info.load_duration = self.load_delay;
        scopeguard::ScopeGuard::into_inner(guard);
        let mut st = self.lock();
        st.state = ServiceState::Ready;
        st.info = Some(info.clone());
        Ok(info)
    }

    async fn embed_texts(&self, texts: &[String], _options: &EmbedOptions) -> Result<Embeddings, Error> {
        let state = self.state();
        if state != ServiceState::Ready {
            return Err(Error::NotReady { state });
        }
        if self.on_host.load(Ordering::SeqCst) {
            // As the real service does: restore, then serve.
            self.requests_on_host.fetch_add(1, Ordering::SeqCst);
            self.go(Residency::Device)?;
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
        self.lock().info.clone()
    }

    fn offloading(&self) -> Option<&dyn Offload> {
        Some(self)
    }

    fn state(&self) -> ServiceState {
        self.lock().state
    }

    async fn cleanup(&self) -> Result<CleanupReport, Error> {
        if self.state() != ServiceState::Ready {
            return Ok(CleanupReport::default());
        }
        let info = self.info();
        let released = self.release(ServiceState::Closed);
        Ok(CleanupReport {
            model: info.as_ref().filter(|_| released).map(|i| i.name.clone()),
            model_weight_bytes: info.filter(|_| released).map(|i| i.weight_bytes).unwrap_or(0),
            ..Default::default()
        })
    }

    fn begin_cleanup(&self) -> bool {
        self.state() == ServiceState::Ready && self.release(ServiceState::Closed)
    }
}

#[async_trait]
impl Offload for FakeService {
    async fn offload(&self) -> Result<MoveReport, Error> {
        self.go(Residency::Host)
    }

    async fn restore(&self) -> Result<MoveReport, Error> {
        self.go(Residency::Device)
    }

    fn residency(&self) -> Option<Residency> {
        (self.state() == ServiceState::Ready).then(|| if self.on_host.load(Ordering::SeqCst) { Residency::Host } else { Residency::Device })
    }
}

impl Drop for FakeService {
    fn drop(&mut self) {
        if self.release(ServiceState::Closed) {
            DROPPED_LIVE.fetch_add(1, Ordering::SeqCst);
        }
    }
}
