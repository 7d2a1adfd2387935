//! Python keyword options into the crates' option structs.

use std::str::FromStr;

use embed_core::{EmbedOptions, InputMode, ModelOptions, Priority};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{self, InvalidInput};

const MODEL_OPTIONS: &str = "device, dtype, max_seq_length, normalize, pooling, query_prefix, document_prefix, \
     default_prompt, default_prompt_name, max_batch_tokens, max_batch_size, threads, cache_dir";

fn parse<T: FromStr<Err = embed_core::Error>>(v: &Bound<'_, PyAny>) -> PyResult<T> {
    v.extract::<String>()?.parse().map_err(errors::core)
}

/// `ModelOptions` from `{"device": "cpu", "dtype": "bf16", …}`; `None` values keep the default.
/// An unknown key is refused by name, so a typo never silently loads another configuration.
pub(crate) fn model_options(options: Option<&Bound<'_, PyDict>>) -> PyResult<ModelOptions> {
    let mut o = ModelOptions::default();
    let Some(d) = options else { return Ok(o) };
    for (k, v) in d.iter() {
        let key: String = k.extract()?;
        if v.is_none() {
            continue;
        }
        match key.as_str() {
            "device" => o.device = parse(&v)?,
            "dtype" => o.dtype = Some(parse(&v)?),
            "pooling" => o.pooling = Some(parse(&v)?),
            "max_seq_length" => o.max_seq_length = Some(v.extract()?),
            "normalize" => o.normalize = Some(v.extract()?),
            "query_prefix" => o.query_prefix = Some(v.extract()?),
            "document_prefix" => o.document_prefix = Some(v.extract()?),
            "default_prompt" => o.default_prompt = Some(v.extract()?),
            "default_prompt_name" => o.default_prompt_name = Some(v.extract()?),
            "max_batch_tokens" => o.max_batch_tokens = Some(v.extract()?),
            "max_batch_size" => o.max_batch_size = Some(v.extract()?),
            "threads" => o.threads = Some(v.extract()?),
            "cache_dir" => o.hub.cache_dir = Some(v.extract::<std::path::PathBuf>()?),
            other => {
                return Err(InvalidInput::new_err(format!("unknown model option {other:?} (known: {MODEL_OPTIONS})")));
            }
        }
    }
    Ok(o)
}

/// The per-call options of `embed_texts` and its kin.
pub(crate) fn embed_options(
    instruction: Option<String>,
    mode: Option<&str>,
    normalize: Option<bool>,
    dimensions: Option<usize>,
    prompt_name: Option<String>,
    truncate: bool,
    priority: Option<&str>,
) -> PyResult<EmbedOptions> {
    let mode = match mode {
        None => None,
        Some("query") => Some(InputMode::Query),
        Some("document") => Some(InputMode::Document),
        Some(other) => {
            return Err(InvalidInput::new_err(format!("invalid mode {other:?} (expected \"query\", \"document\" or None)")))
        }
    };
    let priority = priority.map(Priority::from_str).transpose().map_err(errors::core)?;
    let mut options = EmbedOptions::default().with_truncate(truncate);
    options.mode = mode;
    options.prompt_name = prompt_name;
    options.instruction = instruction;
    options.normalize = normalize;
    options.dimensions = dimensions;
    options.priority = priority;
    Ok(options)
}
