//! # embed-testkit
//!
//! Proof helpers for the `embed` workspace. A dev-dependency only: nothing in a release build
//! depends on it.
//!
//! * [`TinyModel`] writes a small, randomly initialised BERT model directory (config, safetensors
//!   weights, a real WordPiece `tokenizer.json`, sentence-transformers configs) so most tests run
//!   in milliseconds without the real model.
//! * [`minilm_dir`] / [`reference`] locate the real all-MiniLM-L6-v2 copy that `cargo xtask setup`
//!   installs and the sentence-transformers reference vectors committed under `testdata/`.
//! * [`memory`] probes and baselines: resident memory, allocator bytes, live models, CUDA bytes.
//! * [`cleanup`]: run a body that panics, is cancelled, or repeats N times, and assert that
//!   nothing is left (memory back to baseline within a tolerance).
//! * [`FakeService`]: an `EmbeddingService` without libtorch that counts its live instances and
//!   the ones dropped while still live (cleanup left to `Drop`).
//! * [`check_cosines`] / [`check_max_abs_diff`] (and `assert_` forms): compare vectors item by
//!   item, lengths checked, NaN failing.
//! * [`strategies`]: proptest strategies for texts (unicode, empty, whitespace, very long).
//! * [`fixture_dir`] / [`fixture_reference`]: the per-family fixtures of `testdata/fixtures`.
//! * [`checkpoints`]: fixtures laid out as the Hub ships larger models (sharded safetensors).
//! * [`hub::StandInHub`]: a loopback stand-in for the Hugging Face hub's file endpoints.
//! * [`serial`]: one test at a time in a binary whose tests read process-wide counters;
//!   [`module_gate`]: the tests of one module at a time in a binary that holds several (each
//!   crate's `tests/it`); [`eventually`]: wait for a condition with a deadline.

pub mod checkpoints;
pub mod cleanup;
pub mod hub;
mod fake;
pub mod memory;
pub mod strategies;
mod tiny;

use std::path::PathBuf;

pub use fake::{fake_host_bytes, fakes_dropped_while_live, live_fakes, FakeService};
pub use tiny::{corrupt_weights, TinyModel};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the tests of one binary one at a time while held: tests that assert on process-wide
/// figures (live models, model threads, allocator bytes) take it first.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// [`serial`] for synchronous tests (outside any async runtime); the same lock.
pub fn serial_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

/// Which module's tests are running in this process, and who waits for a turn.
struct Turns {
    module: Option<&'static str>,
    /// The module whose test entered last (to see when the turn passes to another).
    last: Option<&'static str>,
    inside: usize,
    queue: std::collections::VecDeque<u64>,
    next_ticket: u64,
}

static TURNS: std::sync::Mutex<Turns> =
    std::sync::Mutex::new(Turns { module: None, last: None, inside: 0, queue: std::collections::VecDeque::new(), next_ticket: 0 });
static TURN_CHANGED: std::sync::Condvar = std::sync::Condvar::new();

/// Held by a test of a module while it runs; see [`module_gate`].
#[must_use = "the gate is held while the guard lives"]
pub struct ModuleGate(());

impl Drop for ModuleGate {
    fn drop(&mut self) {
        let mut t = TURNS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        t.inside -= 1;
        if t.inside == 0 {
            t.module = None;
        }
        TURN_CHANGED.notify_all();
    }
}

/// Lets the tests of one module run at a time (several of them in parallel, as libtest runs
/// them) in a test binary that holds the modules of many former binaries (each crate's
/// `tests/it/main.rs`). Every test there takes it first, with `module_path!()`: tests of another
/// module wait until the running ones are done, so a module's assertions on process-wide figures
/// (live models, allocator bytes, environment variables) see what they saw in a binary of their
/// own. Turns are first come, first served, so no module waits forever. Blocks the calling
/// thread (a test's runtime has nothing else to run before its body starts).
pub fn module_gate(module: &'static str) -> ModuleGate {
    let mut t = TURNS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let ticket = t.next_ticket;
    t.next_ticket += 1;
    t.queue.push_back(ticket);
    while !(t.queue.front() == Some(&ticket) && (t.inside == 0 || t.module == Some(module))) {
        t = TURN_CHANGED.wait(t).unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    t.queue.pop_front();
    t.module = Some(module);
    t.inside += 1;
    let previous = t.last.replace(module).filter(|p| *p != module);
    TURN_CHANGED.notify_all();
    drop(t);
    // Held from here, so that a failed wait below gives the turn back as it unwinds.
    let gate = ModuleGate(());
    if let Some(previous) = previous {
        settle_after(previous, module);
    }
    gate
}

/// Waits until the models and fakes of `previous`, whose tests are all done, are gone: a
/// service dropped with work queued finishes it on its own thread, which in a binary of its own
/// the process's exit would have cut short. Fails, naming `previous`, if they are still there
/// after two minutes.
fn settle_after(previous: &str, module: &str) {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);
    let started = std::time::Instant::now();
    let models = memory::wait_for_no_live_models(LIMIT);
    while live_fakes() > 0 && started.elapsed() < LIMIT {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let fakes = live_fakes();
    assert!(
        models == 0 && fakes == 0,
        "the tests of {previous} left {models} model(s) and {fakes} fake service(s) alive for {LIMIT:?} after they were done; {module} cannot start"
    );
    if std::env::var_os("EMBED_TEST_GATE_TRACE").is_some() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        eprintln!("module_gate: {:.3} {previous} -> {module}; waited {:?} for its models to go", now.as_secs_f64(), started.elapsed());
    }
}

/// Polls `cond` every 5 ms (tokio time: a paused clock advances) until it holds; panics with
/// `what` if it still does not after `within`.
pub async fn eventually(what: &str, within: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let step = std::time::Duration::from_millis(5);
    let mut waited = std::time::Duration::ZERO;
    while !cond() {
        assert!(waited < within, "not reached within {within:?}: {what}");
        tokio::time::sleep(step).await;
        waited += step;
    }
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root exists")
}

/// Directory of the real all-MiniLM-L6-v2 model: `$EMBED_MINILM_DIR`, else the link that
/// `cargo xtask setup` creates at `.models/all-MiniLM-L6-v2`.
///
/// # Panics
/// When neither exists, with the command that fixes it. Tests that need the real model fail
/// loudly rather than skip.
pub fn minilm_dir() -> PathBuf {
    if let Ok(p) = std::env::var("EMBED_MINILM_DIR") {
        return PathBuf::from(p);
    }
    let p = workspace_root().join(".models/all-MiniLM-L6-v2");
    assert!(
        p.join("model.safetensors").is_file(),
        "the real all-MiniLM-L6-v2 model is missing at {}; run `cargo xtask setup` (or set EMBED_MINILM_DIR)",
        p.display()
    );
    p
}

/// Directory of a real model that `cargo xtask setup --model NAME` installs at `.models/NAME`.
///
/// # Panics
/// When it is not installed, with the command that installs it.
pub fn real_model_dir(name: &str) -> PathBuf {
    let p = workspace_root().join(".models").join(name);
    assert!(
        p.join("model.safetensors").is_file(),
        "the real {name} model is missing at {}; run `cargo xtask setup --model {name}`",
        p.display()
    );
    p
}

/// One reference text with its sentence-transformers embedding.
#[derive(Debug, Clone)]
pub struct ReferenceItem {
    /// The input text.
    pub text: String,
    /// Token count reported by sentence-transformers (after truncation).
    pub token_count: usize,
    /// The sentence-transformers embedding.
    pub embedding: Vec<f32>,
}

/// The committed sentence-transformers reference for all-MiniLM-L6-v2
/// (`testdata/minilm-l6-v2.json`).
pub fn reference() -> Vec<ReferenceItem> {
    reference_file(&workspace_root().join("testdata/minilm-l6-v2.json"))
}

/// The model families with a committed fixture: a small random sentence-transformers model
/// and its reference embeddings (`testdata/fixtures/<name>`, written by
/// `python/make_fixtures.py`).
pub const FIXTURES: &[&str] =
    &["bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet", "modernbert", "nomic-bert", "gte", "qwen3", "qwen2", "qwen2-bidirectional", "mistral", "gemma3"];

/// The worst cosine bf16 must reach against f32 on fixture `name`. The rotary fixtures are
/// drawn the most sensitive (sharp attention, texts far apart) so that no rotary or masking
/// mistake hides, and bf16 rounding shows most there. Measured on an AMD EPYC (ours; and
/// sentence-transformers' own bf16 vs f32 on the same fixture): BERT-shaped 0.9997–0.99996;
/// nomic-bert 0.9968, gte 0.9980; qwen3 0.9994 (0.9993), qwen2 0.9976 (0.9987), mistral
/// 0.9944 (0.9963).
pub fn fixture_bf16_min_cosine(name: &str) -> f64 {
    match name {
        "nomic-bert" | "gte" => 0.995,
        "qwen3" | "qwen2" | "qwen2-bidirectional" | "mistral" | "gemma3" => 0.99,
        _ => 0.999,
    }
}

/// The worst cosine int8 (oneDNN's, and weight-only) must reach against f32 on fixture `name`.
/// Measured on an AMD EPYC with the Hadamard transform (the calibration as committed, word
/// tables in int8), oneDNN / weight-only: BERT-shaped 0.9994–0.9999; modernbert 0.9985 /
/// 0.9985, gemma3 0.9992 / 0.9991, qwen3 0.9964 / 0.9979; gte 0.9877 / 0.9973, qwen2 0.9861 /
/// 0.9965, mistral 0.9872 / 0.9921; nomic-bert 0.9921 / 0.9935 (0.935 with oneDNN before the
/// transform); qwen2-bidirectional 0.9676 / 0.9822 — one text, where before the transform it
/// was 0.9869 / 0.9911, while its mean cosine stayed 0.9972 against 0.9974: a tail of random
/// weights under a calibration that reaches these fixtures mostly as unknown tokens (their
/// tokenizers know only their reference texts). The real MiniLM is held to 0.998, the real MPNet
/// to a mean of 0.999 (`real_models.rs`).
pub fn fixture_int8_min_cosine(name: &str) -> f64 {
    match name {
        "nomic-bert" => 0.98,
        "qwen2-bidirectional" => 0.96,
        "gte" | "qwen2" | "mistral" => 0.975,
        "modernbert" | "gemma3" | "qwen3" => 0.995,
        _ => 0.998,
    }
}

/// The `model_type` of fixture `name`'s config.json and the family that implements it (as
/// `embed_core::Family` displays it).
pub fn fixture_model_type_and_family(name: &str) -> (&'static str, &'static str) {
    match name {
        "bert" => ("bert", "bert"),
        "roberta" => ("roberta", "bert"),
        "xlm-roberta" => ("xlm-roberta", "bert"),
        "camembert" => ("camembert", "bert"),
        "distilbert" => ("distilbert", "distilbert"),
        "mpnet" => ("mpnet", "mpnet"),
        "modernbert" => ("modernbert", "modernbert"),
        "nomic-bert" => ("nomic_bert", "nomic_bert"),
        "gte" => ("new", "gte"),
        "qwen3" => ("qwen3", "decoder"),
        "qwen2" | "qwen2-bidirectional" => ("qwen2", "decoder"),
        "mistral" => ("mistral", "decoder"),
        "gemma3" => ("gemma3_text", "gemma3"),
        other => panic!("no fixture {other:?}"),
    }
}

/// The directory of fixture `name` (one of [`FIXTURES`]).
pub fn fixture_dir(name: &str) -> PathBuf {
    let p = workspace_root().join("testdata/fixtures").join(name);
    assert!(p.join("reference.json").is_file(), "no fixture {name:?} at {}", p.display());
    p
}

/// The reference embeddings of fixture `name`.
pub fn fixture_reference(name: &str) -> Vec<ReferenceItem> {
    reference_file(&fixture_dir(name).join("reference.json"))
}

/// The task-model fixtures (`python/make_task_fixtures.py`): cross-encoders, a classifier and
/// a SPLADE encoder, each with the scores or sparse vectors sentence-transformers computes.
pub const TASK_FIXTURES: &[&str] = &["bert-reranker", "xlm-roberta-reranker", "bert-classifier", "bert-splade"];

/// A task fixture's one reference item: the input (a text, or a query and a text), and what
/// the reference computed for it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskItem {
    /// The query of a (query, text) pair; `None` for single texts.
    pub query: Option<String>,
    /// The text (the passage of a pair).
    pub text: String,
    /// Tokens fed to the model after truncation.
    pub token_count: usize,
    /// Whether truncation cut the input (pairs only; false where the reference does not say).
    pub truncated: bool,
    /// Raw logits (classifiers and rerankers).
    pub logits: Vec<f32>,
    /// Non-zero vocabulary ids (SPLADE).
    pub indices: Vec<u32>,
    /// Their weights (SPLADE).
    pub values: Vec<f32>,
}

/// The reference items of task fixture `name` (one of [`TASK_FIXTURES`]).
pub fn task_reference(name: &str) -> Vec<TaskItem> {
    let v = read_reference(&fixture_dir(name).join("reference.json"));
    let floats = |x: &serde_json::Value| -> Vec<f32> { x.as_array().map(|a| a.iter().map(|f| f.as_f64().expect("number") as f32).collect()).unwrap_or_default() };
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|it| TaskItem {
            query: it["query"].as_str().map(String::from),
            text: it["text"].as_str().expect("text").to_string(),
            token_count: it["token_count"].as_u64().expect("token_count") as usize,
            truncated: it["truncated"].as_bool().unwrap_or(false),
            logits: floats(&it["logits"]),
            indices: it["indices"].as_array().map(|a| a.iter().map(|i| i.as_u64().expect("index") as u32).collect()).unwrap_or_default(),
            values: floats(&it["values"]),
        })
        .collect()
}

/// Bytes the tensors of safetensors file `path` whose names pass `include` take at `elt` bytes
/// per element (the file's header read; no tensor loaded).
pub fn safetensors_bytes(path: &std::path::Path, elt: u64, include: impl Fn(&str) -> bool) -> u64 {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(raw[..8].try_into().expect("8-byte header length")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).expect("JSON header");
    header
        .as_object()
        .expect("header object")
        .iter()
        .filter(|(name, _)| *name != "__metadata__" && include(name))
        .map(|(_, t)| t["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dimension")).product::<u64>() * elt)
        .sum()
}

/// The reference of fixture `name`'s queries (`query_items`: the raw texts, embedded with the
/// model's `query` prompt); empty for fixtures without one.
pub fn fixture_query_reference(name: &str) -> Vec<ReferenceItem> {
    items_of(&read_reference(&fixture_dir(name).join("reference.json")), "query_items")
}

fn read_reference(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference file readable")).expect("valid JSON")
}

/// Reads a reference file (`items`: text, token_count, embedding).
pub fn reference_file(path: &std::path::Path) -> Vec<ReferenceItem> {
    let items = items_of(&read_reference(path), "items");
    assert!(!items.is_empty(), "{} has no items", path.display());
    items
}

fn items_of(v: &serde_json::Value, key: &str) -> Vec<ReferenceItem> {
    let Some(items) = v.get(key).and_then(serde_json::Value::as_array) else { return Vec::new() };
    items
        .iter()
        .map(|it| ReferenceItem {
            text: it["text"].as_str().expect("text").to_string(),
            token_count: it["token_count"].as_u64().expect("token_count") as usize,
            embedding: it["embedding"].as_array().expect("embedding").iter().map(|x| x.as_f64().expect("number") as f32).collect(),
        })
        .collect()
}

/// Cosine similarity of two vectors (f64 accumulation). NaN when either holds a NaN.
///
/// # Panics
/// When the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vectors differ in length");
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    dot / (na.sqrt() * nb.sqrt()).max(1e-30)
}

/// Cosine margin within which [`TopK::near_tie`] lets a neighbour in: a swap of neighbours whose
/// similarities to the query differ by less than this is one no search user can tell from a tie.
pub const NEAR_TIE_COSINE: f64 = 0.005;

/// How well a search over `got` returns what the same search over `reference` returns, for
/// each item's `k` nearest neighbours (by cosine, the item itself left out): the share of items
/// whose top `k` is the same set, the mean share of each item's top `k` that is kept, and the
/// share of items whose top `k` under `got` are all, by the reference's own similarities, at
/// most [`NEAR_TIE_COSINE`] below the reference's k-th neighbour. Both hold the same items in
/// the same order.
///
/// # Panics
/// When the counts differ or `k` is not below the count.
pub fn same_top_k(got: &[Vec<f32>], reference: &[Vec<f32>], k: usize) -> TopK {
    assert_eq!(got.len(), reference.len(), "different numbers of vectors");
    assert!(k < got.len(), "top-{k} of {} vectors", got.len());
    let (mut same, mut kept, mut near) = (0, 0, 0);
    for i in 0..got.len() {
        let (a, (b, kth)) = (top_set(got, i, k).0, top_set(reference, i, k));
        same += usize::from(a == b);
        kept += a.iter().filter(|j| b.contains(j)).count();
        near += usize::from(a.iter().all(|&j| cosine(&reference[i], &reference[j]) >= kth - NEAR_TIE_COSINE));
    }
    let n = got.len() as f64;
    TopK { same_set: same as f64 / n, overlap: kept as f64 / (n * k as f64), near_tie: near as f64 / n }
}

/// Item `i`'s `k` nearest neighbours among `v`, as a sorted set of indices, and the k-th one's
/// cosine.
fn top_set(v: &[Vec<f32>], i: usize, k: usize) -> (Vec<usize>, f64) {
    let mut others: Vec<(f64, usize)> = (0..v.len()).filter(|&j| j != i).map(|j| (cosine(&v[i], &v[j]), j)).collect();
    others.sort_by(|x, y| y.0.total_cmp(&x.0));
    let mut set: Vec<usize> = others[..k].iter().map(|&(_, j)| j).collect();
    set.sort_unstable();
    (set, others[k - 1].0)
}

/// See [`same_top_k`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopK {
    /// The share of items whose top k is the same set.
    pub same_set: f64,
    /// The mean share of an item's top k that is kept (recall at k).
    pub overlap: f64,
    /// The share of items whose top k is the same set up to near ties ([`NEAR_TIE_COSINE`]).
    pub near_tie: f64,
}

/// Largest absolute element-wise difference; NaN when any difference is NaN (a plain
/// `fold(0.0, f32::max)` would skip it and report the vectors as close).
///
/// # Panics
/// When the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vectors differ in length");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |worst, d| if d.is_nan() || d > worst { d } else { worst })
}

/// Checks `got` against `expected` item by item: the same number of vectors, each of the same
/// length, and each with cosine at least `min` to its counterpart. A NaN anywhere fails. Returns
/// the worst cosine, or every failing item in one message.
pub fn check_cosines(got: &[Vec<f32>], expected: &[Vec<f32>], min: f64) -> Result<f64, String> {
    check_items(got, expected, |a, b| {
        let c = cosine(a, b);
        // Written so that NaN fails: `c < min` is false for NaN.
        if c >= min {
            Ok(c)
        } else {
            Err(format!("cosine {c} < {min}"))
        }
    })
    // Every item passed its bound above (a NaN cannot), and the fold keeps a NaN regardless.
    .map(|all| all.into_iter().fold(1.0, |worst, c| if c.is_nan() || c < worst { c } else { worst }))
}

/// Checks `got` against `expected` item by item: the same number of vectors, each of the same
/// length, and no element further than `max` from its counterpart. A NaN anywhere fails.
/// Returns the largest difference.
pub fn check_max_abs_diff(got: &[Vec<f32>], expected: &[Vec<f32>], max: f32) -> Result<f32, String> {
    check_items(got, expected, |a, b| {
        let d = max_abs_diff(a, b);
        if d <= max {
            Ok(d)
        } else {
            Err(format!("max abs difference {d} > {max}"))
        }
    })
    // As in `check_cosines`: every item passed its bound, and the fold keeps a NaN regardless.
    .map(|all| all.into_iter().fold(0.0, |worst, d| if d.is_nan() || d > worst { d } else { worst }))
}

fn check_items<T>(
    got: &[Vec<f32>],
    expected: &[Vec<f32>],
    item: impl Fn(&[f32], &[f32]) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    if got.len() != expected.len() {
        return Err(format!("{} vectors, expected {}", got.len(), expected.len()));
    }
    let mut ok = Vec::with_capacity(got.len());
    let mut failures = Vec::new();
    for (i, (a, b)) in got.iter().zip(expected).enumerate() {
        let r = if a.len() != b.len() {
            Err(format!("length {}, expected {}", a.len(), b.len()))
        } else {
            item(a, b)
        };
        match r {
            Ok(v) => ok.push(v),
            Err(e) => failures.push(format!("item {i}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(ok)
    } else {
        Err(format!("{} of {} items fail: {}", failures.len(), got.len(), failures.join("; ")))
    }
}

/// [`check_cosines`] as an assertion; returns the worst cosine.
///
/// # Panics
/// When any item fails, naming every failing item.
#[track_caller]
pub fn assert_cosines(what: &str, got: &[Vec<f32>], expected: &[Vec<f32>], min: f64) -> f64 {
    check_cosines(got, expected, min).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// [`check_max_abs_diff`] as an assertion; returns the largest difference.
///
/// # Panics
/// When any item fails, naming every failing item.
#[track_caller]
pub fn assert_max_abs_diff(what: &str, got: &[Vec<f32>], expected: &[Vec<f32>], max: f32) -> f32 {
    check_max_abs_diff(got, expected, max).unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(rows: &[&[f32]]) -> Vec<Vec<f32>> {
        rows.iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn equal_vectors_pass() {
        let a = v(&[&[1.0, 0.0], &[0.0, 2.0]]);
        assert_eq!(check_cosines(&a, &a, 0.9999), Ok(1.0));
        assert_eq!(check_max_abs_diff(&a, &a, 0.0), Ok(0.0));
    }

    #[test]
    fn nan_fails_even_where_a_fold_would_skip_it() {
        let good = v(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let bad = v(&[&[1.0, 0.0], &[f32::NAN, f32::NAN]]);
        let e = check_cosines(&bad, &good, 0.5).unwrap_err();
        assert!(e.contains("item 1") && e.contains("NaN"), "{e}");
        assert!(check_max_abs_diff(&bad, &good, 1.0).unwrap_err().contains("item 1"));
        assert!(max_abs_diff(&[0.0, f32::NAN, 0.0], &[0.0, 0.0, 0.0]).is_nan());
        // One NaN element is enough.
        let one = v(&[&[1.0, 0.0], &[0.0, f32::NAN]]);
        assert!(check_cosines(&one, &good, 0.5).is_err());
        assert!(check_max_abs_diff(&one, &good, 1.0).is_err());
    }

    #[test]
    fn short_or_missing_vectors_fail() {
        let good = v(&[&[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0]]);
        let short = v(&[&[1.0, 0.0, 0.0], &[0.0, 1.0]]);
        assert!(check_cosines(&short, &good, 0.5).unwrap_err().contains("length 2"));
        assert!(check_max_abs_diff(&short, &good, 1.0).unwrap_err().contains("length 2"));
        let missing = v(&[&[1.0, 0.0, 0.0]]);
        assert!(check_cosines(&missing, &good, 0.5).unwrap_err().contains("1 vectors, expected 2"));
        assert!(check_max_abs_diff(&[], &good, 1.0).is_err());
    }

    #[test]
    fn every_failing_item_is_named() {
        let good = v(&[&[1.0, 0.0], &[0.0, 1.0], &[1.0, 1.0]]);
        let bad = v(&[&[0.0, 1.0], &[0.0, 1.0], &[-1.0, -1.0]]);
        let e = check_cosines(&bad, &good, 0.9).unwrap_err();
        assert!(e.starts_with("2 of 3 items fail") && e.contains("item 0") && e.contains("item 2"), "{e}");
    }

    #[test]
    fn near_ties_forgive_swaps_of_nearly_equal_neighbours_only() {
        // Item 0's two nearest neighbours nearly tie (cosines 0.99875 and 0.99846).
        let close = v(&[&[1.0, 0.0, 0.0], &[1.0, 0.05, 0.0], &[1.0, 0.0, 0.0555], &[0.0, 0.0, 1.0]]);
        let swapped = v(&[&[1.0, 0.0, 0.0], &[1.0, 0.06, 0.0], &[1.0, 0.0, 0.05], &[0.0, 0.0, 1.0]]);
        assert_eq!(same_top_k(&close, &close, 1), TopK { same_set: 1.0, overlap: 1.0, near_tie: 1.0 });
        let t = same_top_k(&swapped, &close, 1);
        assert!(t.same_set == 0.75 && t.near_tie == 1.0, "{t:?}");
        // Against a reference where item 1 is far from item 0 (0.894), taking item 1 as item 0's
        // nearest is a real loss.
        let far = v(&[&[1.0, 0.0, 0.0], &[1.0, 0.5, 0.0], &[1.0, 0.0, 0.05], &[0.0, 0.0, 1.0]]);
        let t = same_top_k(&close, &far, 1);
        assert!(t.same_set < 1.0 && t.near_tie < 1.0, "{t:?}");
    }

    #[test]
    fn module_gate_lets_one_module_in_at_a_time_and_several_of_its_tests_together() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        // Per module: tests inside now, the most at once; and tests of other modules inside.
        let inside = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)]);
        let most = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)]);
        let overlaps = Arc::new(AtomicUsize::new(0));
        let names = ["gate_test::a", "gate_test::b", "gate_test::c"];
        let threads: Vec<_> = (0..12)
            .map(|i| {
                let (inside, most, overlaps) = (inside.clone(), most.clone(), overlaps.clone());
                std::thread::spawn(move || {
                    for round in 0..5 {
                        let m = (i + round) % 3;
                        let _gate = module_gate(names[m]);
                        let now = inside[m].fetch_add(1, Ordering::SeqCst) + 1;
                        most[m].fetch_max(now, Ordering::SeqCst);
                        if (0..3).any(|o| o != m && inside[o].load(Ordering::SeqCst) > 0) {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        inside[m].fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "tests of two modules ran at once");
        assert!(most.iter().all(|m| m.load(Ordering::SeqCst) >= 1), "a module never got in");
        // Not a plain mutex: a second test of the module inside gets in beside the first.
        let first = module_gate("gate_test::a");
        let (tx, rx) = std::sync::mpsc::channel();
        let second = std::thread::spawn(move || {
            let _gate = module_gate("gate_test::a");
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(30)).expect("a test of the module inside waited for the turn");
        second.join().unwrap();
        drop(first);
        let t = TURNS.lock().unwrap();
        assert_eq!((t.inside, t.module, t.queue.len()), (0, None, 0), "the gate is left held");
    }
}
