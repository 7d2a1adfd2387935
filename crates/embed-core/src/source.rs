//! Where a model comes from: a local directory or a Hugging Face hub id.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A model location as given by a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelSource {
    /// A directory in the standard Hugging Face layout.
    Local(PathBuf),
    /// A hub id such as `sentence-transformers/all-MiniLM-L6-v2`, resolved through the local
    /// Hugging Face cache and downloaded when the network allows.
    Hub(String),
}

/// Files fetched for a hub model; optional ones may be absent upstream.
const REQUIRED_FILES: &[&str] = &["config.json", "model.safetensors", "tokenizer.json"];
const OPTIONAL_FILES: &[&str] = &[
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

impl ModelSource {
    /// Interprets `s`: an existing directory (or anything that looks like a path) is local;
    /// `org/name` is a hub id.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidSource { source_str: s.to_string(), reason: reason.into() };
        if s.trim().is_empty() {
            return Err(invalid("empty"));
        }
        let path = Path::new(s);
        if path.is_dir() {
            return Ok(ModelSource::Local(path.to_path_buf()));
        }
        let looks_like_path = s.starts_with('/') || s.starts_with('.') || s.starts_with('~') || s.contains('\\');
        if looks_like_path {
            return Err(invalid("no such directory"));
        }
        if is_hub_id(s) {
            Ok(ModelSource::Hub(s.to_string()))
        } else {
            Err(invalid("neither an existing directory nor a hub id of the form org/name"))
        }
    }

    /// Resolves the source to a local directory, consulting the cache and, unless
    /// `HF_HUB_OFFLINE=1`, the hub. Blocking: call from a worker thread.
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            ModelSource::Local(p) => Ok(p.clone()),
            ModelSource::Hub(id) => resolve_hub(id),
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Local(p) => write!(f, "{}", p.display()),
            ModelSource::Hub(id) => f.write_str(id),
        }
    }
}

/// `org/name` with the characters the hub allows; no `..`, no extra slashes.
pub fn is_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with('.')
            && !p.contains("..")
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(org) && ok(name)
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

fn resolve_hub(id: &str) -> Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    let cache_dir = cache.path().clone();
    let repo = cache.model(id.to_string());
    if let Some(config) = repo.get("config.json") {
        if REQUIRED_FILES.iter().all(|f| repo.get(f).is_some()) {
            return Ok(config.parent().expect("cached file has a parent").to_path_buf());
        }
    }
    if offline() {
        return Err(Error::ModelNotAvailable {
            id: id.into(),
            cache: cache_dir,
            reason: "HF_HUB_OFFLINE is set".into(),
        });
    }
    let not_available = |reason: String| Error::ModelNotAvailable { id: id.into(), cache: cache_dir.clone(), reason };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| not_available(e.to_string()))?;
    let remote = api.model(id.to_string());
    let mut dir = None;
    for f in REQUIRED_FILES {
        let p = remote.get(f).map_err(|e| not_available(format!("{f}: {e}")))?;
        dir.get_or_insert_with(|| p.parent().expect("downloaded file has a parent").to_path_buf());
    }
    for f in OPTIONAL_FILES {
        // Optional files are genuinely optional upstream; a 404 is not an error.
        let _ = remote.get(f);
    }
    Ok(dir.expect("REQUIRED_FILES is not empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(is_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(is_hub_id("BAAI/bge-small-en-v1.5"));
        for bad in ["../../etc", "a/b/c", "/etc/passwd", "a/..", "a/.b", "noslash", "a/", "a/b c"] {
            assert!(!is_hub_id(bad), "{bad}");
        }
    }

    #[test]
    fn parse_sources() {
        let dir = std::env::temp_dir();
        assert_eq!(ModelSource::parse(dir.to_str().unwrap()).unwrap(), ModelSource::Local(dir.clone()));
        assert!(matches!(ModelSource::parse("org/model").unwrap(), ModelSource::Hub(_)));
        for bad in ["", "/no/such/dir", "./missing", "../../etc/passwd", "justaname"] {
            assert!(matches!(ModelSource::parse(bad), Err(Error::InvalidSource { .. })), "{bad}");
        }
    }

    #[test]
    fn offline_cache_miss_names_the_id() {
        let tmp = std::env::temp_dir().join(format!("embed-hf-cache-{}", std::process::id()));
        // Env vars are process-wide; this test owns HF_HOME/HF_HUB_OFFLINE only inside this process
        // and no other unit test in this crate reads them.
        std::env::set_var("HF_HOME", &tmp);
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let err = ModelSource::Hub("org/not-cached".into()).resolve().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::ModelNotAvailable { .. }), "{msg}");
        assert!(msg.contains("org/not-cached") && msg.contains("local model directory"), "{msg}");
    }
}

/// What a model's weights will take once loaded in `dtype`, from the header of `dir`'s
/// `model.safetensors` (no tensor data is read): each floating-point tensor at `dtype`'s width,
/// except that in int8 only matrices are 1 byte per element (norms and biases stay f32).
/// `None` for `dtype` counts the file's own widths. `None` when the file is missing or its
/// header unreadable. Dense modules and a family's own skipped tensors are not counted: an
/// estimate for budgeting before a load, not the figure a loaded model reports.
pub fn estimate_weight_bytes(dir: &Path, dtype: Option<crate::DType>) -> Option<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(dir.join("model.safetensors")).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // A real header is kilobytes; refuse to allocate for a corrupt length.
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
    let mut total = 0u64;
    for (name, t) in &header {
        if name == "__metadata__" {
            continue;
        }
        let shape: Vec<u64> = t.get("shape")?.as_array()?.iter().map(|d| d.as_u64()).collect::<Option<_>>()?;
        let numel: u64 = shape.iter().product();
        let stored = match t.get("dtype")?.as_str()? {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let float = matches!(t.get("dtype")?.as_str()?, "F64" | "F32" | "F16" | "BF16");
        let width = match dtype {
            Some(crate::DType::Int8) if float && shape.len() >= 2 => 1,
            Some(crate::DType::Int8) if float => 4,
            Some(d) if float => d.size_of() as u64,
            _ => stored,
        };
        total += numel * width;
    }
    Some(total)
}
