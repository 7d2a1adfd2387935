//! # embed-pool
//!
//! An LRU pool of loaded embedding models that never evicts a model in use.
#![allow(missing_docs)]
pub use embed_scoped;
