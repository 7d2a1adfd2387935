//! # embed-server
//!
//! The HTTP front end for `embed-pool`.
#![allow(missing_docs)]
pub use embed_pool;
