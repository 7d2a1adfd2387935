//! Typed access to `config.json`'s fields, errors naming the file and the field.

use std::path::Path;

use serde_json::Value;

use super::{Activation, ArchConfig, Details, Family};
use crate::{Error, Result};

/// Typed access to `config.json`'s fields, errors naming the file and the field.
pub(crate) struct Fields<'a> {
    pub(crate) v: &'a Value,
    pub(crate) path: &'a Path,
}

impl Fields<'_> {
    pub(crate) fn error(&self, reason: impl Into<String>) -> Error {
        Error::config(self.path, reason.into())
    }

    pub(crate) fn usize(&self, name: &str) -> Result<usize> {
        match self.v.get(name) {
            Some(x) => x
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.error(format!("field {name:?} must be a non-negative integer, got {x}"))),
            None => Err(self.error(format!("missing field {name:?}"))),
        }
    }

    pub(crate) fn usize_or(&self, name: &str, default: usize) -> Result<usize> {
        if self.v.get(name).is_none_or(Value::is_null) {
            Ok(default)
        } else {
            self.usize(name)
        }
    }

    pub(crate) fn f64_or(&self, name: &str, default: f64) -> Result<f64> {
        match self.v.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_f64().ok_or_else(|| self.error(format!("field {name:?} must be a number, got {x}"))),
        }
    }

    pub(crate) fn bool_or(&self, name: &str, default: bool) -> Result<bool> {
        match self.v.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_bool().ok_or_else(|| self.error(format!("field {name:?} must be true or false, got {x}"))),
        }
    }

    pub(crate) fn str_or<'v>(&'v self, name: &str, default: &'v str) -> Result<&'v str> {
        match self.v.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_str().ok_or_else(|| self.error(format!("field {name:?} must be a string, got {x}"))),
        }
    }

    /// The activation named by `name`, one of those [`Activation::parse`] knows.
    pub(crate) fn activation(&self, name: &str, default: &str) -> Result<Activation> {
        let act = self.str_or(name, default)?;
        Activation::parse(act)
            .ok_or_else(|| self.error(format!("{name} {act:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu, silu)")))
    }

    /// Tokens an input may have when positions start at `offset` in a table of
    /// `max_position_embeddings` rows (RoBERTa-style ids start past the padding index).
    pub(crate) fn positions_after(&self, max_position_embeddings: usize, offset: i64) -> Result<usize> {
        max_position_embeddings.checked_sub(offset as usize).filter(|&n| n >= 2).ok_or_else(|| {
            self.error(format!("max_position_embeddings {max_position_embeddings} leaves no room after the position offset {offset}"))
        })
    }

    /// `num_key_value_heads` (default: `heads`), which must divide `heads` (grouped-query
    /// attention).
    pub(crate) fn kv_heads(&self, heads: usize) -> Result<usize> {
        let kv_heads = self.usize_or("num_key_value_heads", heads)?;
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(self.error(format!("{heads} attention heads cannot be shared by {kv_heads} key/value heads")));
        }
        Ok(kv_heads)
    }

    /// `layer_types` as "is this a sliding-window layer", one per layer; `None` when the config
    /// has no such key (older configs describe the pattern another way).
    pub(crate) fn sliding_layers(&self, layers: usize) -> Result<Option<Vec<bool>>> {
        let Some(types) = self.v.get("layer_types").and_then(Value::as_array) else { return Ok(None) };
        if types.len() != layers {
            return Err(self.error(format!("layer_types has {} entries for {layers} layers", types.len())));
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(false),
                Some("sliding_attention") => Ok(true),
                _ => Err(self.error(format!("layer type {t} is not full_attention or sliding_attention"))),
            })
            .collect::<Result<Vec<bool>>>()
            .map(Some)
    }

    /// An [`ArchConfig`] from the usual Hugging Face keys (`vocab_size`, `hidden_size`,
    /// `num_hidden_layers`, `num_attention_heads`, `intermediate_size`).
    pub(crate) fn standard(&self, family: Family, model_type: String, max_tokens: usize, details: Details) -> Result<ArchConfig> {
        Ok(ArchConfig {
            family,
            model_type,
            vocab_size: self.usize("vocab_size")?,
            hidden_size: self.usize("hidden_size")?,
            num_hidden_layers: self.usize("num_hidden_layers")?,
            num_attention_heads: self.usize("num_attention_heads")?,
            intermediate_size: self.usize("intermediate_size")?,
            max_tokens,
            details,
        })
    }

    pub(crate) fn heads_divide(&self, hidden: usize, heads: usize) -> Result<()> {
        if heads == 0 || hidden % heads != 0 {
            return Err(self.error(format!("hidden size {hidden} is not divisible by {heads} attention heads")));
        }
        Ok(())
    }
}
