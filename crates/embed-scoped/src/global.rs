//! A process-wide embedding service: lazily loaded, single-flight, replaceable.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use embed_core::{CleanupReport, DenseEmbeddingService, EmbeddingService, ModelSpec};
use tokio::sync::Notify;

use crate::Error;

struct Entry {
    service: DenseEmbeddingService,
    lease_ended: Arc<Notify>,
}

/// Keeps the global model it was taken from alive and serving, even across a
/// [`GlobalService::replace`]: the old model is cleaned only after its last lease ends.
#[must_use = "the lease keeps the model it was taken from serving; drop it when done"]
pub struct GlobalLease {
    entry: Option<Arc<Entry>>,
}

impl GlobalLease {
    fn new(entry: Arc<Entry>) -> Self {
        GlobalLease { entry: Some(entry) }
    }
}

impl Deref for GlobalLease {
    type Target = DenseEmbeddingService;
    fn deref(&self) -> &DenseEmbeddingService {
        &self.entry.as_ref().expect("present until drop").service
    }
}

impl Drop for GlobalLease {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            let notify = entry.lease_ended.clone();
            // Release our reference before waking the retiring side, which counts references.
            drop(entry);
            notify.notify_waiters();
        }
    }
}

/// Counters of a [`GlobalService`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GlobalStats {
    /// Successful loads (first use and replacements).
    pub loads: u64,
    /// Failed load attempts.
    pub load_failures: u64,
    /// Retired models whose leases outlived the drain timeout (released anyway).
    pub forced_retirements: u64,
}

/// One shared model, loaded on first use.
///
/// * Thread-safe and single-flight: concurrent first callers wait for one load.
/// * A failed load is not cached: the next call tries again.
/// * [`replace`](Self::replace) loads the new model first, swaps it in, lets requests on the old
///   one finish (their [`GlobalLease`]s), then cleans the old one up.
/// * [`shutdown`](Self::shutdown) releases the model; a later `get` loads it again.
pub struct GlobalService {
    spec: Mutex<ModelSpec>,
    current: RwLock<Option<Arc<Entry>>>,
    /// Serialises loads and swaps; never held by readers on the fast path.
    init: tokio::sync::Mutex<()>,
    drain_timeout: Duration,
    loads: AtomicU64,
    load_failures: AtomicU64,
    forced_retirements: AtomicU64,
}

impl GlobalService {
    /// A global service that will load `spec` on first use.
    pub fn new(spec: ModelSpec) -> Self {
        GlobalService {
            spec: Mutex::new(spec),
            current: RwLock::new(None),
            init: tokio::sync::Mutex::new(()),
            drain_timeout: Duration::from_secs(30),
            loads: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
            forced_retirements: AtomicU64::new(0),
        }
    }

    /// How long `replace`/`shutdown` wait for leases on the old model before releasing it anyway
    /// (default 30 s).
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    fn loaded(&self) -> Option<Arc<Entry>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the spec used by the next load (first use or after `shutdown`).
    pub fn configure(&self, spec: ModelSpec) {
        *self.spec.lock().unwrap_or_else(|p| p.into_inner()) = spec;
    }

    /// Counters.
    pub fn stats(&self) -> GlobalStats {
        GlobalStats {
            loads: self.loads.load(Ordering::SeqCst),
            load_failures: self.load_failures.load(Ordering::SeqCst),
            forced_retirements: self.forced_retirements.load(Ordering::SeqCst),
        }
    }

    /// True when a model is loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded().is_some()
    }

    async fn load_entry(&self, spec: ModelSpec) -> Result<Arc<Entry>, Error> {
        match DenseEmbeddingService::from_spec(spec).await {
            Ok(service) => {
                self.loads.fetch_add(1, Ordering::SeqCst);
                Ok(Arc::new(Entry { service, lease_ended: Arc::new(Notify::new()) }))
            }
            Err(e) => {
                self.load_failures.fetch_add(1, Ordering::SeqCst);
                Err(e.into())
            }
        }
    }

    /// A lease on the global model, loading it first if needed.
    pub async fn get(&self) -> Result<GlobalLease, Error> {
        if let Some(entry) = self.loaded() {
            return Ok(GlobalLease::new(entry));
        }
        let _init = self.init.lock().await;
        if let Some(entry) = self.loaded() {
            return Ok(GlobalLease::new(entry));
        }
        let spec = self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let entry = self.load_entry(spec).await?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(entry.clone());
        Ok(GlobalLease::new(entry))
    }

    /// Loads `spec`, makes it the global model, then waits for requests on the previous model
    /// to finish and cleans it up. If the new model fails to load, the old one stays.
    pub async fn replace(&self, spec: ModelSpec) -> Result<CleanupReport, Error> {
        let _init = self.init.lock().await;
        let entry = self.load_entry(spec.clone()).await?;
        self.configure(spec);
        let old = self.current.write().unwrap_or_else(|p| p.into_inner()).replace(entry);
        drop(_init);
        match old {
            Some(old) => self.retire(old).await,
            None => Ok(CleanupReport::default()),
        }
    }

    /// Releases the global model after its leases end. The next `get` loads it again.
    pub async fn shutdown(&self) -> Result<CleanupReport, Error> {
        let _init = self.init.lock().await;
        let old = self.current.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(_init);
        match old {
            Some(old) => self.retire(old).await,
            None => Ok(CleanupReport::default()),
        }
    }

    async fn retire(&self, old: Arc<Entry>) -> Result<CleanupReport, Error> {
        let drained = tokio::time::timeout(self.drain_timeout, async {
            loop {
                let notified = old.lease_ended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if Arc::strong_count(&old) == 1 {
                    break;
                }
                notified.await;
            }
        })
        .await;
        if drained.is_err() {
            self.forced_retirements.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(
                leases = Arc::strong_count(&old) - 1,
                "leases on the old global model outlived the drain timeout; releasing it anyway"
            );
        }
        Ok(old.service.cleanup().await?)
    }
}

impl Drop for GlobalService {
    fn drop(&mut self) {
        if let Some(entry) = self.current.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            entry.service.begin_cleanup();
        }
    }
}

/// The default spec of the process-wide service: `$EMBED_MODEL` (a directory or hub id), else
/// `sentence-transformers/all-MiniLM-L6-v2`; device from `$EMBED_DEVICE` when set.
fn default_spec() -> ModelSpec {
    let source = std::env::var("EMBED_MODEL").unwrap_or_else(|_| "sentence-transformers/all-MiniLM-L6-v2".into());
    let mut spec = ModelSpec::new(source);
    if let Some(device) = std::env::var("EMBED_DEVICE").ok().and_then(|d| d.parse().ok()) {
        spec.options.device = device;
    }
    spec
}

/// The process-wide service (see [`GlobalService`]). Configure it with
/// `global().configure(spec)` before first use, or through `EMBED_MODEL` / `EMBED_DEVICE`.
pub fn global() -> &'static GlobalService {
    static GLOBAL: OnceLock<GlobalService> = OnceLock::new();
    GLOBAL.get_or_init(|| GlobalService::new(default_spec()))
}

/// A lease on the process-wide service, loading it on first use.
///
/// ```
/// # let (_tmp, dir) = embed_testkit::TinyModel::default().write_temp();
/// use embed_core::{EmbedOptions, EmbeddingService, ModelSpec};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// embed_scoped::global().configure(ModelSpec::new(dir.to_string_lossy()));
/// let svc = embed_scoped::get_embedding_service().await?;
/// let out = svc.embed_texts(&["hi".to_string()], &EmbedOptions::default()).await?;
/// assert_eq!(out.vectors.len(), 1);
/// drop(svc);
/// embed_scoped::global().shutdown().await?;
/// # Ok::<_, embed_scoped::Error>(()) }).unwrap();
/// ```
pub async fn get_embedding_service() -> Result<GlobalLease, Error> {
    global().get().await
}
