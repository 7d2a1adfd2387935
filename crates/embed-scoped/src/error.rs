//! Errors of the scoped APIs.

use std::fmt;

/// Errors of this crate outside a scope body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service failed (load, cleanup, inference).
    #[error(transparent)]
    Core(#[from] embed_core::Error),
    /// A blocking API was called on a thread that runs an async runtime.
    #[error("the blocking API was called from inside an async runtime; use the async API (embed_scoped::scope) there")]
    InsideAsyncRuntime,
    /// The private runtime of the blocking API could not be built.
    #[error("cannot start the runtime for the blocking API: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The outcome of a scope that did not succeed. A cleanup error never hides the body's error:
/// when both fail, both are reported.
#[derive(Debug)]
pub enum ScopeError<E> {
    /// The model failed to load; the body did not run and nothing is left allocated.
    Load(Error),
    /// The body returned an error; cleanup succeeded.
    Body(E),
    /// The body succeeded but cleanup failed.
    Cleanup(Error),
    /// Both failed.
    BodyAndCleanup {
        /// The body's error.
        body: E,
        /// The cleanup's error.
        cleanup: Error,
    },
}

impl<E> ScopeError<E> {
    /// The body's error, if the body failed.
    pub fn body(&self) -> Option<&E> {
        match self {
            ScopeError::Body(e) | ScopeError::BodyAndCleanup { body: e, .. } => Some(e),
            _ => None,
        }
    }

    pub(crate) fn combine<T>(body: Result<T, E>, cleanup: Result<(), Error>) -> Result<T, ScopeError<E>> {
        match (body, cleanup) {
            (Ok(v), Ok(())) => Ok(v),
            (Err(e), Ok(())) => Err(ScopeError::Body(e)),
            (Ok(_), Err(c)) => Err(ScopeError::Cleanup(c)),
            (Err(e), Err(c)) => Err(ScopeError::BodyAndCleanup { body: e, cleanup: c }),
        }
    }
}

impl<E: fmt::Display> fmt::Display for ScopeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::Load(e) => write!(f, "loading the scoped model failed: {e}"),
            ScopeError::Body(e) => write!(f, "{e}"),
            ScopeError::Cleanup(e) => write!(f, "the scope's work succeeded but cleanup failed: {e}"),
            ScopeError::BodyAndCleanup { body, cleanup } => write!(f, "{body} (and cleanup failed too: {cleanup})"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ScopeError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScopeError::Load(e) | ScopeError::Cleanup(e) => Some(e),
            ScopeError::Body(e) | ScopeError::BodyAndCleanup { body: e, .. } => Some(e),
        }
    }
}
