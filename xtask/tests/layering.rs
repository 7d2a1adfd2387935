//! The workspace's layering, checked from the manifests: embed-core at the bottom, embed-scoped
//! and embed-pool siblings on it (neither knows the other), embed-server on embed-pool;
//! embed-testkit only as a dev-dependency; nothing depends on xtask. Module boundaries inside
//! the crates are checked from the sources (the tests below `dependencies_flow_one_way`).
//! If this fails, an arrow points the wrong way: move the code, not the test.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn manifest(root: &Path, krate: &str) -> toml::Table {
    let dir = if krate == "xtask" { root.join("xtask") } else { root.join("crates").join(krate) };
    std::fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap()
}

fn deps(m: &toml::Table, section: &str) -> Vec<String> {
    m.get(section).and_then(|d| d.as_table()).map(|t| t.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn dependencies_flow_one_way() {
    let root = root();
    // What each library crate may depend on among the workspace's crates (normal and build
    // dependencies); dev-dependencies may add embed-testkit and lower crates.
    let allowed: &[(&str, &[&str])] = &[
        ("embed-core", &[]),
        ("embed-scoped", &["embed-core"]),
        ("embed-pool", &["embed-core"]),
        ("embed-server", &["embed-core", "embed-pool"]),
        ("embed-testkit", &["embed-core"]),
    ];
    let workspace: Vec<&str> = allowed.iter().map(|(k, _)| *k).chain(["xtask"]).collect();
    for (krate, may) in allowed {
        let m = manifest(&root, krate);
        for dep in deps(&m, "dependencies").iter().chain(deps(&m, "build-dependencies").iter()) {
            if workspace.contains(&dep.as_str()) {
                assert!(may.contains(&dep.as_str()), "{krate} depends on {dep}; it may depend on {may:?} only");
            }
        }
    }
    let core = manifest(&root, "embed-core");
    for forbidden in ["axum", "dashmap", "tower", "hyper", "reqwest"] {
        assert!(!deps(&core, "dependencies").iter().any(|d| d == forbidden), "embed-core depends on {forbidden}");
    }
    for krate in ["embed-scoped", "embed-pool"] {
        let m = manifest(&root, krate);
        for forbidden in ["axum", "tower", "hyper"] {
            assert!(!deps(&m, "dependencies").iter().any(|d| d == forbidden), "{krate} must not know about HTTP ({forbidden})");
        }
    }
    for krate in workspace {
        let m = manifest(&root, krate);
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            assert!(!deps(&m, section).iter().any(|d| d == "xtask"), "{krate} depends on xtask");
        }
    }
}

/// The `.rs` files at `path` (a file, or a folder searched recursively).
fn sources(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Lines of code (not comments) under `path` that contain `needle`, as `file:line: text`.
fn code_mentions(path: &str, needle: &str) -> Vec<String> {
    let full = root().join(path);
    let files = sources(&full);
    assert!(!files.is_empty(), "{path}: no sources (moved? update the test)");
    let mut hits = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        for (i, line) in source.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")) {
            if line.contains(needle) {
                hits.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    hits
}

fn assert_none(path: &str, needle: &str, why: &str) {
    let hits = code_mentions(path, needle);
    assert!(hits.is_empty(), "{path} must not use {needle:?} ({why}):\n{}", hits.join("\n"));
}

/// The pool decides under its lock and acts outside it: the decisions (`embed-pool/src/state.rs`
/// and the warm tier's, `state/warm.rs`)
/// must stay plain functions over the state, testable without a runtime. If this fails, move the
/// async part to `tasks.rs` and pass its result in.
#[test]
fn pool_state_imports_no_tokio() {
    for file in ["crates/embed-pool/src/state.rs", "crates/embed-pool/src/state/warm.rs"] {
        assert_none(file, "tokio", "decisions under the lock are plain functions");
        assert_none(file, ".await", "decisions under the lock never wait");
    }
}

/// The facade builds each `Lease`; the lease knows the pool's shared state and its slot, never
/// the facade (so the two never import each other).
#[test]
fn the_lease_does_not_know_the_facade() {
    assert_none("crates/embed-pool/src/lease.rs", "crate::pool", "the lease is built by the facade");
    assert_none("crates/embed-pool/src/lease.rs", "Pool", "the lease is built by the facade");
}

/// Model code runs on the model's own OS thread, synchronously: no async runtime in the model
/// families, their layers or pooling.
#[test]
fn model_code_is_synchronous() {
    for path in ["crates/embed-core/src/models", "crates/embed-core/src/layers", "crates/embed-core/src/pooling.rs"] {
        assert_none(path, "tokio", "model code runs on the worker thread");
        assert_none(path, "async ", "model code runs on the worker thread");
    }
}

/// Reading a model directory and preparing text touch no tensors: they stay testable and fast
/// without libtorch doing anything.
#[test]
fn config_and_text_preparation_use_no_tensors() {
    for path in ["crates/embed-core/src/config.rs", "crates/embed-core/src/text.rs", "crates/embed-core/src/source.rs"] {
        assert_none(path, "tch::", "configuration and tokenization are tensor-free");
        assert_none(path, "Tensor", "configuration and tokenization are tensor-free");
    }
}

/// API bodies are plain serde types, independent of the HTTP framework: the handlers in each
/// API's `mod.rs` do the HTTP.
#[test]
fn api_bodies_know_no_http_framework() {
    let api = root().join("crates/embed-server/src/api");
    let mut checked = 0;
    for entry in std::fs::read_dir(&api).unwrap() {
        let types = entry.unwrap().path().join("types.rs");
        if types.is_file() {
            let rel = types.strip_prefix(root()).unwrap().to_string_lossy().into_owned();
            assert_none(&rel, "axum", "bodies are plain serde types");
            assert_none(&rel, "AppState", "bodies are plain serde types");
            checked += 1;
        }
    }
    assert!(checked >= 4, "expected a types.rs per API (tei, openai, admin, tasks), found {checked}");
}

/// The checks above can fail: the scanner sees code and skips only comments.
#[test]
fn the_scanner_sees_code_and_skips_comments() {
    assert!(!code_mentions("crates/embed-pool/src/status.rs", "tokio").is_empty(), "status.rs uses tokio's Instant");
    let state = std::fs::read_to_string(root().join("crates/embed-pool/src/state.rs")).unwrap();
    assert!(state.contains("tokio"), "state.rs names tokio in a comment");
    assert!(code_mentions("crates/embed-pool/src/state.rs", "tokio").is_empty());
}
