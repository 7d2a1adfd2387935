//! Which files a checkpoint is made of (one `model.safetensors`, a sharded index and its shards,
//! or a torch pickle), read without touching a tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Error, Result};

/// A single-file checkpoint's name.
pub(crate) const SINGLE_FILE: &str = "model.safetensors";
/// A sharded checkpoint's index: `{"metadata": {"total_size": …}, "weight_map": {tensor: shard}}`.
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";
/// A checkpoint written by `torch.save(state_dict)`, as older repos ship their weights.
pub(crate) const TORCH_FILE: &str = "pytorch_model.bin";

/// The weights file of model directory `dir`: `model.safetensors`, else the sharded index, else
/// `pytorch_model.bin` (transformers prefers safetensors when both exist; so do we). `None` when
/// none is there.
pub(crate) fn checkpoint_in(dir: &Path) -> Option<PathBuf> {
    [SINGLE_FILE, INDEX_FILE, TORCH_FILE].into_iter().map(|f| dir.join(f)).find(|p| p.is_file())
}

/// Whether `path` is read as a torch pickle (`.bin`, `.pt`, `.pth`) rather than safetensors.
pub(crate) fn is_torch_pickle(path: &Path) -> bool {
    path.extension().is_some_and(|e| ["bin", "pt", "pth"].iter().any(|x| e == std::ffi::OsStr::new(x)))
}

pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidWeights { path: path.into(), reason: reason.into() }
}

/// What a sharded checkpoint's index says.
pub(crate) struct ShardIndex {
    /// The shard files, in first-seen order.
    pub(crate) files: Vec<String>,
    /// Tensor name → the shard file holding it.
    pub(crate) weight_map: HashMap<String, String>,
    /// `metadata.total_size`: the shards' tensor bytes as stored.
    pub(crate) total_size: Option<u64>,
}

/// Reads a sharded checkpoint's index. Shard names must be plain file names beside the index.
pub(crate) fn read_index(index: &Path) -> Result<ShardIndex> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| invalid(index, format!("not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(index, "no \"weight_map\" object"))?;
    let mut files: Vec<String> = Vec::new();
    let mut names = HashMap::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| invalid(index, format!("the shard of {tensor:?} is not a file name")))?;
        let plain = Path::new(file).file_name().is_some_and(|f| f == std::ffi::OsStr::new(file));
        if !plain || file.starts_with('.') {
            return Err(invalid(index, format!("shard {file:?} is not a plain file name beside the index")));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
        names.insert(tensor.clone(), file.to_string());
    }
    if files.is_empty() {
        return Err(invalid(index, "the weight map is empty"));
    }
    let total_size = v.get("metadata").and_then(|m| m.get("total_size")).and_then(Value::as_u64);
    Ok(ShardIndex { files, weight_map: names, total_size })
}
