//! The crate's one error type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Which limit of the pool stood in the way of loading a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// Every one of the `max_models` slots holds a leased, pinned or loading model.
    MaxModels(usize),
    /// The memory budget (bytes) is taken by models that cannot be evicted.
    MemoryBudget(u64),
    /// The CUDA device has too little free memory and nothing on it can be evicted.
    CudaMemory {
        /// The device index.
        device: usize,
        /// Free bytes the driver reported.
        free: u64,
    },
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::MaxModels(n) => {
                write!(f, "all {n} model slots (max_models) hold leased, pinned or loading models")
            }
            Limit::MemoryBudget(b) => {
                write!(f, "the memory budget of {b} bytes is taken by leased, pinned or loading models")
            }
            Limit::CudaMemory { device, free } => {
                write!(f, "cuda:{device} has only {free} bytes free and none of its models can be evicted")
            }
        }
    }
}

/// Everything that can go wrong in the pool. Messages name the model at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The name is not in the registry (and arbitrary sources are off).
    #[error("unknown model {name:?}: it is not registered with the pool")]
    UnknownModel {
        /// The name asked for.
        name: String,
    },
    /// Arbitrary sources are allowed, but the name is neither a model directory nor a hub id.
    #[error("model {name:?} is neither registered nor a valid model source: {source}")]
    InvalidSource {
        /// The name asked for.
        name: String,
        /// Why [`embed_core::ModelSource::parse`] rejected it.
        #[source]
        source: embed_core::Error,
    },
    /// The model failed to load. Every caller waiting for that load gets this error; nothing
    /// is left in the pool, so the next `get` tries again.
    #[error("loading model {name:?} failed: {source}")]
    Load {
        /// The pool's name for the model (its registry key).
        name: String,
        /// The loader's error, shared by every waiter of the failed load.
        #[source]
        source: Arc<embed_core::Error>,
    },
    /// The load took longer than [`crate::PoolTimeouts::load`]; it was abandoned.
    #[error("loading model {name:?} did not finish within {timeout:?}")]
    LoadTimeout {
        /// The pool's name for the model (its registry key).
        name: String,
        /// The load timeout in force (`PoolTimeouts::load`).
        timeout: Duration,
    },
    /// The loader panicked; the load counts as failed and nothing stays reserved.
    #[error("the loader panicked while loading model {name:?}: {message}")]
    LoaderPanicked {
        /// The pool's name for the model (its registry key).
        name: String,
        /// The panic message.
        message: String,
    },
    /// No room could be made for the model within [`crate::PoolTimeouts::wait`].
    #[error("pool exhausted: no room for model {name:?} after waiting {waited:?}: {limit}")]
    Exhausted {
        /// The model that could not be loaded.
        name: String,
        /// The limit that was in the way.
        limit: Limit,
        /// How long the caller waited for a lease to end.
        waited: Duration,
    },
    /// The model alone is larger than the pool's whole memory budget.
    #[error("model {name:?} needs about {bytes} bytes, more than the pool's whole memory budget of {budget} bytes")]
    ModelTooLarge {
        /// The pool's name for the model (its registry key).
        name: String,
        /// Its (estimated) weight bytes.
        bytes: u64,
        /// The pool's whole memory budget in bytes.
        budget: u64,
    },
    /// [`crate::UnloadMode::FailIfLeased`] on a model that has active leases.
    #[error("model {name:?} has {leases} active lease(s) and was not unloaded")]
    Leased {
        /// The pool's name for the model (its registry key).
        name: String,
        /// Leases held (or callers waiting for its load) at the time.
        leases: usize,
    },
    /// [`crate::Pool::offload`] could not move the model to the warm tier.
    #[error("model {name:?} cannot go to the warm tier: {reason}")]
    CannotOffload {
        /// The pool's name for the model.
        name: String,
        /// Why: leased, not ready, the tier is off, no host room, or the move failed.
        reason: String,
    },
    /// The model is being unloaded and did not finish within the wait timeout.
    #[error("model {name:?} is being unloaded; it did not finish within {waited:?}")]
    Unloading {
        /// The pool's name for the model (its registry key).
        name: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The pool was closed.
    #[error("the pool is closed; model {name:?} cannot be leased")]
    Closed {
        /// The model asked for.
        name: String,
    },
}

impl PoolError {
    /// The model the error is about.
    pub fn model(&self) -> &str {
        match self {
            PoolError::UnknownModel { name }
            | PoolError::InvalidSource { name, .. }
            | PoolError::Load { name, .. }
            | PoolError::LoadTimeout { name, .. }
            | PoolError::LoaderPanicked { name, .. }
            | PoolError::Exhausted { name, .. }
            | PoolError::ModelTooLarge { name, .. }
            | PoolError::Leased { name, .. }
            | PoolError::CannotOffload { name, .. }
            | PoolError::Unloading { name, .. }
            | PoolError::Closed { name } => name,
        }
    }
}
