//! Where a model comes from: a local directory or a Hugging Face hub id.

use std::path::{Path, PathBuf};

use crate::{Error, HubOptions, Result};

/// A model location as given by a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelSource {
    /// A directory in the standard Hugging Face layout.
    Local(PathBuf),
    /// A hub id such as `sentence-transformers/all-MiniLM-L6-v2`, resolved through the local
    /// Hugging Face cache and downloaded when the network allows.
    Hub {
        /// `org/name`.
        id: String,
        /// A branch, tag or commit (`org/name@revision`); the repo's default branch when `None`.
        revision: Option<String>,
    },
}

/// Files fetched for every hub model when the repo has them, beside the weights and the files
/// `modules.json` names. `config.json` and `tokenizer.json` are required.
const REQUIRED_FILES: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

impl ModelSource {
    /// Interprets `s`: an existing directory (or anything that looks like a path) is local;
    /// `org/name` or `org/name@revision` is a hub id.
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
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) => (id, Some(rev)),
            None => (s, None),
        };
        if let Some(rev) = revision {
            if !is_revision(rev) {
                return Err(invalid("the revision after '@' must be a branch, tag or commit (letters, digits, '.', '_', '-', '/')"));
            }
        }
        if is_hub_id(id) {
            Ok(ModelSource::Hub { id: id.to_string(), revision: revision.map(String::from) })
        } else {
            Err(invalid("neither an existing directory nor a hub id of the form org/name[@revision]"))
        }
    }

    /// Resolves the source to a local directory, consulting the cache and, unless
    /// `HF_HUB_OFFLINE=1`, the hub. Blocking: call from a worker thread.
    pub fn resolve(&self) -> Result<PathBuf> {
        self.resolve_with(&HubOptions::default())
    }

    /// [`ModelSource::resolve`] with this cache directory and token (unset ones from the
    /// environment).
    pub fn resolve_with(&self, hub: &HubOptions) -> Result<PathBuf> {
        match self {
            ModelSource::Local(p) => Ok(p.clone()),
            ModelSource::Hub { id, revision } => resolve_hub(id, revision.as_deref(), hub),
        }
    }

    /// What the model's weights will take once loaded in `dtype` ([`estimate_weight_bytes`]),
    /// for a memory budget to refuse a model before it is downloaded. For a hub id only
    /// `config.json` and a sharded model's index are fetched (cache first; the cache alone with
    /// `HF_HUB_OFFLINE=1`), never a weights file: a sharded model is estimated from the index's
    /// `metadata.total_size`, a single-file one only once its file is in the cache. `None` where
    /// nothing says. Blocking: call from a worker thread.
    pub fn estimate_weight_bytes(&self, dtype: Option<crate::DType>) -> Option<u64> {
        match self {
            ModelSource::Local(dir) => estimate_weight_bytes(dir, dtype),
            ModelSource::Hub { id, revision } => hub_estimate(id, revision.as_deref(), dtype),
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Local(p) => write!(f, "{}", p.display()),
            ModelSource::Hub { id, revision: None } => f.write_str(id),
            ModelSource::Hub { id, revision: Some(r) } => write!(f, "{id}@{r}"),
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

/// A branch, tag or commit name: what git allows that is also safe in a URL path and a cache
/// directory name (`refs/pr/1` included; no `..`, no leading `/` or `.`).
fn is_revision(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 200
        && !r.starts_with(['/', '.'])
        && !r.ends_with('/')
        && !r.contains("..")
        && !r.contains("//")
        && r.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// The commit a model directory resolved from the hub cache holds (`…/snapshots/<commit>`).
pub fn hub_commit(dir: &Path) -> Option<String> {
    let parent = dir.parent()?;
    if parent.file_name()? != "snapshots" {
        return None;
    }
    let name = dir.file_name()?.to_str()?;
    (name.len() >= 7 && name.chars().all(|c| c.is_ascii_hexdigit())).then(|| name.to_string())
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

/// The hub token: `HF_TOKEN`, else the file `HF_TOKEN_PATH` names, else the cache's `token`
/// file (`$HF_HOME/token`, what `huggingface-cli login` writes). Never logged.
fn hub_token(cache: &hf_hub::Cache) -> Option<String> {
    let clean = |t: String| Some(t.trim().to_string()).filter(|t| !t.is_empty());
    if let Some(t) = std::env::var("HF_TOKEN").ok().and_then(clean) {
        return Some(t);
    }
    if let Some(path) = std::env::var_os("HF_TOKEN_PATH") {
        return std::fs::read_to_string(path).ok().and_then(clean);
    }
    cache.token().and_then(clean)
}

/// Where a needed file comes from: the cache alone (offline), or the cache then the hub.
trait Fetch {
    /// The local path of `file`; `Ok(None)` when the repo does not have it (or, offline, the
    /// cache does not).
    fn fetch(&mut self, file: &str) -> Result<Option<PathBuf>>;
}

/// huggingface_hub's record that a revision lacks a file: an empty
/// `<repo folder>/.no_exist/<commit>/<file>` in the cache (hf-hub, which shares the cache
/// layout, neither writes nor reads them). Written when the hub answers 404, read by the cache
/// pass so that a start tells "the repo lacks it" from "not downloaded yet".
struct NoExist {
    repo_dir: PathBuf,
    revision: String,
}

impl NoExist {
    fn new(cache: &hf_hub::Cache, repo: &hf_hub::Repo) -> NoExist {
        NoExist { repo_dir: cache.path().join(repo.folder_name()), revision: repo.revision().to_string() }
    }

    /// The marker's path, under the commit the cached revision points at.
    fn marker(&self, file: &str) -> Option<PathBuf> {
        let commit = std::fs::read_to_string(self.repo_dir.join("refs").join(&self.revision)).ok()?;
        let commit = commit.trim();
        (!commit.is_empty() && !commit.contains(['/', '.'])).then(|| self.repo_dir.join(".no_exist").join(commit).join(file))
    }

    fn is_marked(&self, file: &str) -> bool {
        self.marker(file).is_some_and(|p| p.is_file())
    }

    /// Best effort: without the marker a later start only asks the hub again.
    fn mark(&self, file: &str) {
        let Some(path) = self.marker(file) else { return };
        let made = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::File::create(&path).map(drop));
        if let Err(e) = made {
            tracing::debug!(path = %path.display(), error = %e, "cannot record a file the repo lacks");
        }
    }
}

/// The cache alone. `complete` (the pass before asking the hub): a file neither cached nor
/// recorded as absent from the repo is an error, so the hub is asked for it; otherwise (offline)
/// it counts as absent.
struct CacheOnly {
    cache: hf_hub::CacheRepo,
    no_exist: NoExist,
    complete: bool,
}

impl CacheOnly {
    fn new(cache: &hf_hub::Cache, repo: &hf_hub::Repo, complete: bool) -> CacheOnly {
        CacheOnly { cache: cache.repo(repo.clone()), no_exist: NoExist::new(cache, repo), complete }
    }
}

impl Fetch for CacheOnly {
    fn fetch(&mut self, file: &str) -> Result<Option<PathBuf>> {
        match self.cache.get(file) {
            Some(p) => Ok(Some(p)),
            None if self.complete && !self.no_exist.is_marked(file) => {
                Err(Error::MissingFile { path: file.into(), hint: " (not in the cache; the hub is asked)".into() })
            }
            None => Ok(None),
        }
    }
}

struct Online<'a> {
    cache: hf_hub::CacheRepo,
    no_exist: NoExist,
    remote: hf_hub::api::sync::ApiRepo,
    failed: &'a dyn Fn(String) -> Error,
    /// Set when a request did not reach the hub (no answer at all, as opposed to an HTTP status).
    unreachable: bool,
}

impl Fetch for Online<'_> {
    fn fetch(&mut self, file: &str) -> Result<Option<PathBuf>> {
        if let Some(p) = self.cache.get(file) {
            return Ok(Some(p));
        }
        if self.no_exist.is_marked(file) {
            return Ok(None);
        }
        match self.remote.download_with_progress(file, LogProgress::default()) {
            Ok(p) => Ok(Some(p)),
            Err(e) => match status_of(&e) {
                Some(404) => {
                    self.no_exist.mark(file);
                    Ok(None)
                }
                Some(401 | 403) => Err((self.failed)(format!(
                    "the hub refused {file} (HTTP {}): the repo is gated or private, or the revision is not yours to read; \
                     set HF_TOKEN (or HF_TOKEN_PATH, or log in) to a token with access",
                    status_of(&e).unwrap_or_default()
                ))),
                _ => {
                    self.unreachable |= is_transport(&e);
                    Err((self.failed)(format!("{file}: {e}")))
                }
            },
        }
    }
}

fn is_transport(e: &hf_hub::api::sync::ApiError) -> bool {
    matches!(e, hf_hub::api::sync::ApiError::RequestError(r) if matches!(&**r, ureq::Error::Transport(_)))
}

fn status_of(e: &hf_hub::api::sync::ApiError) -> Option<u16> {
    match e {
        hf_hub::api::sync::ApiError::RequestError(r) => match &**r {
            ureq::Error::Status(code, _) => Some(*code),
            _ => None,
        },
        _ => None,
    }
}

/// Logs a download's progress (bytes, rate) at most every five seconds, and its end.
#[derive(Default)]
struct LogProgress {
    file: String,
    size: usize,
    done: usize,
    started: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
}

impl hf_hub::api::Progress for LogProgress {
    fn init(&mut self, size: usize, filename: &str) {
        (self.file, self.size, self.done) = (filename.to_string(), size, 0);
        let now = std::time::Instant::now();
        (self.started, self.last) = (Some(now), Some(now));
        tracing::info!(file = %self.file, bytes = size, "downloading from the hub");
    }

    fn update(&mut self, size: usize) {
        self.done += size;
        let now = std::time::Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l).as_secs() >= 5) {
            self.last = Some(now);
            let secs = self.started.map_or(0.0, |s| now.duration_since(s).as_secs_f64()).max(1e-3);
            tracing::info!(file = %self.file, done = self.done, of = self.size, mib_per_s = format!("{:.1}", self.done as f64 / secs / 1048576.0), "downloading");
        }
    }

    fn finish(&mut self) {
        let secs = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64()).max(1e-3);
        tracing::info!(file = %self.file, bytes = self.done, mib_per_s = format!("{:.1}", self.done as f64 / secs / 1048576.0), "downloaded");
    }
}

/// Fetches everything a model needs: the fixed files, the weights (the single file, or the index
/// and every shard it names), and every module directory `modules.json` lists (its
/// `config.json` and weights). Returns the snapshot directory.
fn fetch_model(f: &mut dyn Fetch, missing: &dyn Fn(String) -> Error) -> Result<PathBuf> {
    use crate::model_dir::checkpoint::{read_index, INDEX_FILE, SINGLE_FILE, TORCH_FILE};
    let mut dir = None;
    for file in REQUIRED_FILES {
        let p = f.fetch(file)?.ok_or_else(|| missing(format!("the repo has no {file}")))?;
        dir.get_or_insert_with(|| p.parent().expect("a cached file has a parent").to_path_buf());
    }
    let dir = dir.expect("REQUIRED_FILES is not empty");
    for file in OPTIONAL_FILES {
        f.fetch(file)?;
    }
    // Safetensors where the repo has them; pytorch_model.bin (often beside them in older repos,
    // the same weights) only where it has none.
    if f.fetch(SINGLE_FILE)?.is_none() {
        if let Some(index) = f.fetch(INDEX_FILE)? {
            for shard in read_index(&index)?.files {
                f.fetch(&shard)?.ok_or_else(|| missing(format!("{shard}, named by {INDEX_FILE}, is not in the repo")))?;
            }
        } else if f.fetch(TORCH_FILE)?.is_none() {
            return Err(missing(format!("the repo has none of {SINGLE_FILE}, {INDEX_FILE}, {TORCH_FILE}")));
        }
    }
    if let Some(modules) = dir.join("modules.json").is_file().then(|| dir.join("modules.json")) {
        let text = std::fs::read_to_string(&modules).map_err(|e| Error::io(&modules, e))?;
        let list: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::config(&modules, e.to_string()))?;
        for m in list.as_array().into_iter().flatten() {
            let path = m.get("path").and_then(serde_json::Value::as_str).unwrap_or("");
            let kind = m.get("type").and_then(serde_json::Value::as_str).unwrap_or("");
            // The Transformer module is the repo's root, fetched above.
            if path.is_empty() || path.split('/').any(|p| p.is_empty() || p == "..") {
                continue;
            }
            let config = f.fetch(&format!("{path}/config.json"))?;
            let dense = kind.rsplit('.').next() == Some("Dense");
            if dense || config.is_some() {
                let weights = match f.fetch(&format!("{path}/{SINGLE_FILE}"))? {
                    Some(w) => Some(w),
                    None if dense => f.fetch(&format!("{path}/{TORCH_FILE}"))?,
                    None => None,
                };
                if dense && (config.is_none() || weights.is_none()) {
                    return Err(missing(format!("the Dense module {path:?} needs config.json and {SINGLE_FILE} or {TORCH_FILE}")));
                }
            }
        }
    }
    Ok(dir)
}

/// The hub repo of `id` at `revision`, and how errors show it (`id` or `id@revision`).
fn hub_repo(id: &str, revision: Option<&str>) -> (hf_hub::Repo, String) {
    match revision {
        Some(r) => (hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, r.to_string()), format!("{id}@{r}")),
        None => (hf_hub::Repo::model(id.to_string()), id.to_string()),
    }
}

/// The hub client for `cache`, with the token from `hub` or else the environment's.
fn hub_api(cache: &hf_hub::Cache, hub: &HubOptions) -> std::result::Result<hf_hub::api::sync::Api, hf_hub::api::sync::ApiError> {
    let token = hub.token.as_ref().map(|t| t.expose().to_string()).or_else(|| hub_token(cache));
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env();
    if let Some(dir) = &hub.cache_dir {
        builder = builder.with_cache_dir(dir.clone());
    }
    builder.with_progress(false).with_token(token).build()
}

/// The cache `hub` names, or the environment's.
fn hub_cache(hub: &HubOptions) -> hf_hub::Cache {
    match &hub.cache_dir {
        Some(dir) => hf_hub::Cache::new(dir.clone()),
        None => hf_hub::Cache::from_env(),
    }
}

/// [`ModelSource::estimate_weight_bytes`] for a hub id: `config.json` and (unless the single
/// weights file is cached) the sharded index, then the estimate from the snapshot folder.
fn hub_estimate(id: &str, revision: Option<&str>, dtype: Option<crate::DType>) -> Option<u64> {
    use crate::model_dir::checkpoint::{INDEX_FILE, SINGLE_FILE};
    let cache = hf_hub::Cache::from_env();
    let (repo, shown) = hub_repo(id, revision);
    let failed = |reason: String| Error::ModelNotAvailable { id: shown.clone(), cache: cache.path().clone(), reason };
    let mut cached = CacheOnly::new(&cache, &repo, false);
    let mut online;
    let f: &mut dyn Fetch = if offline() {
        &mut cached
    } else {
        let no_exist = NoExist::new(&cache, &repo);
        online = Online { cache: cache.repo(repo.clone()), no_exist, remote: hub_api(&cache, &HubOptions::default()).ok()?.repo(repo), failed: &failed, unreachable: false };
        &mut online
    };
    let dir = f.fetch("config.json").ok()??.parent()?.to_path_buf();
    if !dir.join(SINGLE_FILE).is_file() {
        f.fetch(INDEX_FILE).ok()?;
    }
    estimate_weight_bytes(&dir, dtype)
}

fn resolve_hub(id: &str, revision: Option<&str>, hub: &HubOptions) -> Result<PathBuf> {
    let cache = hub_cache(hub);
    let cache_dir = cache.path().clone();
    let (repo, shown) = hub_repo(id, revision);
    let not_available = |reason: String| Error::ModelNotAvailable { id: shown.clone(), cache: cache_dir.clone(), reason };
    let offline_missing = |what: String| not_available(format!("HF_HUB_OFFLINE is set and the cache lacks what it needs ({what})"));
    if offline() {
        return fetch_model(&mut CacheOnly::new(&cache, &repo, false), &offline_missing);
    }
    // Everything the model needs already cached, and every file it lacks recorded as absent
    // from the repo: no request to the hub (a cached model loads where the hub cannot be
    // reached, and a load asks nothing for files the repo lacks). A file neither cached nor
    // recorded (a cache another tool filled in part) is asked for.
    if let Ok(dir) = fetch_model(&mut CacheOnly::new(&cache, &repo, true), &offline_missing) {
        return Ok(dir);
    }
    let api = hub_api(&cache, hub).map_err(|e| not_available(e.to_string()))?;
    let no_exist = NoExist::new(&cache, &repo);
    let mut online = Online { cache: cache.repo(repo.clone()), no_exist, remote: api.repo(repo.clone()), failed: &not_available, unreachable: false };
    match fetch_model(&mut online, &not_available) {
        // The hub cannot be reached and the cache has what the model needs, but does not record
        // which files the repo lacks (filled by an older version or another tool): load what it
        // has, as offline.
        Err(e) if online.unreachable => match fetch_model(&mut CacheOnly::new(&cache, &repo, false), &offline_missing) {
            Ok(dir) => {
                tracing::warn!(model = %shown, error = %e, "the hub cannot be reached; loading what the cache has");
                Ok(dir)
            }
            Err(_) => Err(e),
        },
        other => other,
    }
}


/// What a model's weights will take once loaded in `dtype`, from the headers of `dir`'s
/// `model.safetensors`, or of every shard its `model.safetensors.index.json` names, or from the
/// pickle of its `pytorch_model.bin` (no tensor data is read): each floating-point tensor at `dtype`'s width, except that in int8 only
/// matrices are 1 byte per element (norms and biases stay f32). `None` for `dtype` counts the
/// files' own widths. A sharded model whose shards are not all present yet is estimated from the
/// index's `metadata.total_size`, rescaled from `config.json`'s `torch_dtype`. `None` when
/// nothing readable is there. Dense modules and a family's own skipped tensors are not counted:
/// an estimate for budgeting before a load, not the figure a loaded model reports.
pub fn estimate_weight_bytes(dir: &Path, dtype: Option<crate::DType>) -> Option<u64> {
    use crate::model_dir::checkpoint::{read_index, INDEX_FILE, SINGLE_FILE};
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return header_estimate(&single, dtype);
    }
    let torch = dir.join(crate::model_dir::checkpoint::TORCH_FILE);
    if !dir.join(INDEX_FILE).is_file() && torch.is_file() {
        let tensors = crate::nn::weights::torch_pickle_shapes(&torch).ok()?;
        return Some(tensors.iter().map(|t| t.shape.iter().product::<u64>() * estimated_width(t.float, t.shape.len(), t.width, dtype)).sum());
    }
    let index = read_index(&dir.join(INDEX_FILE)).ok()?;
    let (files, total) = (index.files, index.total_size);
    let shards: Option<Vec<u64>> = files.iter().map(|f| header_estimate(&dir.join(f), dtype)).collect();
    match (shards, total) {
        (Some(sizes), _) => Some(sizes.iter().sum()),
        (None, Some(total)) => {
            let stored = std::fs::read_to_string(dir.join("config.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|c| c.get("torch_dtype").or_else(|| c.get("dtype")).and_then(|d| d.as_str()).map(str::to_owned));
            let stored: u64 = match stored.as_deref() {
                Some("float16" | "bfloat16") => 2,
                Some("float64") => 8,
                _ => 4,
            };
            let width = match dtype {
                None => stored,
                Some(crate::DType::Int8) => 1,
                Some(d) => d.size_of() as u64,
            };
            Some(total / stored * width)
        }
        (None, None) => None,
    }
}

/// [`estimate_weight_bytes`] for one safetensors file, from its header alone.
fn header_estimate(path: &Path, dtype: Option<crate::DType>) -> Option<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
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
        total += numel * estimated_width(float, shape.len(), stored, dtype);
    }
    Some(total)
}

/// Bytes per element of a tensor of `dims` dimensions stored `stored` bytes wide, once loaded
/// in `dtype`: floats at `dtype`'s width (in int8, matrices at 1 and the rest at f32's 4).
fn estimated_width(float: bool, dims: usize, stored: u64, dtype: Option<crate::DType>) -> u64 {
    match dtype {
        Some(crate::DType::Int8) if float && dims >= 2 => 1,
        Some(crate::DType::Int8) if float => 4,
        Some(d) if float => d.size_of() as u64,
        _ => stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache directory given in the options is where the model is looked up (TEI's
    /// `--huggingface-hub-cache`): a model cached there resolves without the hub, and one the
    /// directory lacks is reported against that directory.
    #[test]
    fn cache_dir_from_options() {
        let cache = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = cache.path().join("models--org--cached");
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        let hub = HubOptions::new(Some(cache.path().to_path_buf()), crate::HubToken::new("hf_secret_never_shown"));
        let source = ModelSource::Hub { id: "org/cached".into(), revision: None };
        assert_eq!(source.resolve_with(&hub).unwrap(), snap);
        assert!(!format!("{hub:?}").contains("hf_secret"), "options' Debug hides the token: {hub:?}");
        assert!(crate::HubToken::new("  ").is_none(), "a blank token is no token");
    }

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
        assert_eq!(ModelSource::parse("org/model").unwrap(), ModelSource::Hub { id: "org/model".into(), revision: None });
        assert_eq!(ModelSource::parse("org/model@v1.2").unwrap(), ModelSource::Hub { id: "org/model".into(), revision: Some("v1.2".into()) });
        assert_eq!(ModelSource::parse("org/model@refs/pr/1").unwrap().to_string(), "org/model@refs/pr/1");
        for bad in ["", "/no/such/dir", "./missing", "../../etc/passwd", "justaname", "org/model@", "org/model@../x", "org/model@a b", "org/model@/x"] {
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
        let err = ModelSource::Hub { id: "org/not-cached".into(), revision: None }.resolve().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::ModelNotAvailable { .. }), "{msg}");
        assert!(msg.contains("org/not-cached") && msg.contains("local model directory"), "{msg}");
    }
}
