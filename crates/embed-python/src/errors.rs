//! Typed Python exceptions for the Rust errors, with the Rust messages unchanged.
//!
//! ```text
//! EmbedError
//! ├── ModelNotFound      the name or path is not a model (core InvalidSource, ModelNotAvailable,
//! │                      MissingFile; pool UnknownModel, InvalidSource)
//! ├── ModelLoadError     the model is there but does not load (config, weights, tokenizer, timeout)
//! ├── InvalidInput       an option, input or operation the model refuses (also a ValueError's job)
//! ├── DeviceUnavailable  the device or dtype cannot be used here
//! ├── OutOfMemory        out of memory even for a single input
//! ├── PoolExhausted      no room in the pool within its wait timeout (or the model exceeds the budget)
//! ├── ServiceClosed      the service was cleaned up, shut down, or its pool closed
//! └── InferenceError     the forward pass failed or the model's worker panicked
//! ```

use embed_pool::PoolError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(embed._native, EmbedError, PyException, "Base class of every error of the embed package.");
create_exception!(embed._native, ModelNotFound, EmbedError, "The model name or path does not name a model.");
create_exception!(embed._native, ModelLoadError, EmbedError, "The model exists but could not be loaded.");
create_exception!(embed._native, InvalidInput, EmbedError, "An option, input or operation the model refuses.");
create_exception!(embed._native, DeviceUnavailable, EmbedError, "The requested device or dtype cannot be used.");
create_exception!(embed._native, OutOfMemory, EmbedError, "Out of memory even for a single input.");
create_exception!(embed._native, PoolExhausted, EmbedError, "The pool had no room for the model within its wait timeout.");
create_exception!(embed._native, ServiceClosed, EmbedError, "The service was cleaned up, shut down, or its pool closed.");
create_exception!(embed._native, InferenceError, EmbedError, "The forward pass failed or the model's worker panicked.");

/// The exception class for a core error, raised with `message`.
fn core_class(e: &embed_core::Error, message: String) -> PyErr {
    use embed_core::Error as E;
    match e {
        E::InvalidSource { .. } | E::ModelNotAvailable { .. } | E::MissingFile { .. } => ModelNotFound::new_err(message),
        E::Io { .. }
        | E::InvalidConfig { .. }
        | E::UnsupportedArchitecture { .. }
        | E::InvalidWeights { .. }
        | E::PickleRefused { .. }
        | E::LegacyTorchFormat { .. }
        | E::WeightsMismatch { .. }
        | E::Tokenizer { .. } => ModelLoadError::new_err(message),
        E::InvalidDevice(_)
        | E::InvalidDtype(_)
        | E::InvalidOption { .. }
        | E::UnknownPrompt { .. }
        | E::InputTooLong { .. }
        | E::InvalidTokens { .. }
        | E::WrongKind { .. } => InvalidInput::new_err(message),
        E::DeviceUnavailable { .. } | E::UnsupportedDtype { .. } => DeviceUnavailable::new_err(message),
        E::OutOfMemory { .. } => OutOfMemory::new_err(message),
        E::NotReady { .. } | E::ShutDown { .. } | E::AlreadyLoaded { .. } => ServiceClosed::new_err(message),
        E::WorkerPanicked { .. } | E::Inference { .. } | E::Memory(_) => InferenceError::new_err(message),
        _ => EmbedError::new_err(message),
    }
}

/// A core error as its Python exception.
pub(crate) fn core(e: embed_core::Error) -> PyErr {
    let message = e.to_string();
    core_class(&e, message)
}

/// A scoped-API error as its Python exception.
pub(crate) fn scoped(e: embed_scoped::Error) -> PyErr {
    match e {
        embed_scoped::Error::Core(e) => core(e),
        other => EmbedError::new_err(other.to_string()),
    }
}

/// A pool error as its Python exception. A failed load is classed by what failed in the
/// load (a missing model is `ModelNotFound`), with the pool's message naming the model.
pub(crate) fn pool(e: PoolError) -> PyErr {
    let message = e.to_string();
    match &e {
        PoolError::UnknownModel { .. } | PoolError::InvalidSource { .. } => ModelNotFound::new_err(message),
        PoolError::Load { source, .. } => core_class(source, message),
        PoolError::LoadTimeout { .. } | PoolError::LoaderPanicked { .. } => ModelLoadError::new_err(message),
        PoolError::Exhausted { .. } | PoolError::ModelTooLarge { .. } => PoolExhausted::new_err(message),
        PoolError::Closed { .. } => ServiceClosed::new_err(message),
        _ => EmbedError::new_err(message),
    }
}

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EmbedError", py.get_type::<EmbedError>())?;
    m.add("ModelNotFound", py.get_type::<ModelNotFound>())?;
    m.add("ModelLoadError", py.get_type::<ModelLoadError>())?;
    m.add("InvalidInput", py.get_type::<InvalidInput>())?;
    m.add("DeviceUnavailable", py.get_type::<DeviceUnavailable>())?;
    m.add("OutOfMemory", py.get_type::<OutOfMemory>())?;
    m.add("PoolExhausted", py.get_type::<PoolExhausted>())?;
    m.add("ServiceClosed", py.get_type::<ServiceClosed>())?;
    m.add("InferenceError", py.get_type::<InferenceError>())?;
    Ok(())
}
