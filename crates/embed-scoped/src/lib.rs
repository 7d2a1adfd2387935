//! # embed-scoped
//!
//! Lifetimes with guaranteed cleanup on top of `embed-core`: closure-scoped services, guards,
//! temporary models and a thread-safe global service.
#![allow(missing_docs)]
pub use embed_core;
