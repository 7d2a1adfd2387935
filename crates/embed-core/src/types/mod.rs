//! The value types of the service API, by what they are for: `options` (what to load and how to
//! call), `outputs` (what comes back from a call), `info` (what the service reports about a
//! model). Everything is re-exported here and from the crate root.

mod info;
mod options;
mod outputs;

pub use info::{BatchStats, CleanupReport, ModelInfo, ModelKind, MoveReport, PriorityStats, Residency, ServiceState};
pub use options::{EmbedOptions, HubOptions, HubToken, InputMode, ModelOptions, ModelSpec, Priority};
/// Public with feature `test-util` (re-exported from the crate root).
#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))]
pub use options::FaultInjection;
pub use outputs::{max_sim, Classified, ClassifyInput, Embeddings, MultiVectorEmbeddings, SparseEmbeddings, SparseVector, TokenEmbeddings, TokenizedText};
