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
//! * [`FakeService`]: an `EmbeddingService` without libtorch that counts its live instances.
//! * [`strategies`]: proptest strategies for texts (unicode, empty, whitespace, very long).

pub mod cleanup;
mod fake;
pub mod memory;
pub mod strategies;
mod tiny;

use std::path::PathBuf;

pub use fake::{live_fakes, FakeService};
pub use tiny::{corrupt_weights, TinyModel};

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
    let path = workspace_root().join("testdata/minilm-l6-v2.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("reference file readable")).expect("valid JSON");
    v["items"]
        .as_array()
        .expect("items array")
        .iter()
        .map(|it| ReferenceItem {
            text: it["text"].as_str().expect("text").to_string(),
            token_count: it["token_count"].as_u64().expect("token_count") as usize,
            embedding: it["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect(),
        })
        .collect()
}

/// Cosine similarity of two vectors (f64 accumulation).
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

/// Largest absolute element-wise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vectors differ in length");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
