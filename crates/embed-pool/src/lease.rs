//! The guard that keeps a pooled model loaded.

use std::ops::Deref;
use std::sync::{Arc, Weak};

use embed_core::EmbeddingService;

use crate::state::Slot;
use crate::tasks::Shared;

/// A model borrowed from a [`crate::Pool`]. While any lease on a model is held, the pool never
/// evicts it. Dropping the lease returns the model: a map lookup and a counter under a short
/// lock, nothing that blocks or awaits.
///
/// Derefs to the service, so `lease.embed_texts(..)` works directly. Lease operations are
/// associated functions (`Lease::name(&lease)`) so they never shadow the service's methods.
#[must_use = "a lease keeps its model loaded; dropping it at once hands the model straight back to the pool"]
pub struct Lease {
    slot: Arc<Slot>,
    pool: Weak<Shared>,
    id: u64,
}

impl Lease {
    pub(crate) fn new(pool: &Arc<Shared>, slot: Arc<Slot>, id: u64) -> Self {
        Lease { slot, pool: Arc::downgrade(pool), id }
    }

    /// The pool's name for the model.
    pub fn name(this: &Self) -> &str {
        &this.slot.name
    }

    /// A shared handle to the service, e.g. to move into a task. It does not keep the model
    /// loaded by itself: used after the lease is dropped, it may find the model released.
    pub fn service(this: &Self) -> Arc<dyn EmbeddingService> {
        this.slot.service.clone()
    }
}

impl Deref for Lease {
    type Target = dyn EmbeddingService;
    fn deref(&self) -> &Self::Target {
        &*self.slot.service
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // The pool may already be gone; then its Drop has released the model.
        if let Some(pool) = self.pool.upgrade() {
            pool.release(&self.slot.name, self.id);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("model", &self.slot.name).field("state", &self.slot.service.state()).finish()
    }
}
