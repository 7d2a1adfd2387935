//! The workspace's layering, checked from the manifests: embed-core at the bottom, embed-scoped
//! and embed-pool siblings on it (neither knows the other), embed-server on embed-pool;
//! embed-testkit only as a dev-dependency; nothing depends on xtask. Every dependency table
//! counts (platform-specific `[target.*]` ones and build-dependencies too), and a renamed
//! dependency counts as the package it names. Module boundaries inside
//! the crates are checked from the sources (the tests below `dependencies_flow_one_way`).
//! If this fails, an arrow points the wrong way: move the code, not the test.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The crates whose manifests the layering is about.
const CRATES: [&str; 6] = ["embed-core", "embed-scoped", "embed-pool", "embed-server", "embed-testkit", "xtask"];

/// The workspace's manifests: the root's and each crate's.
struct Manifests {
    root: toml::Table,
    crates: Vec<(&'static str, toml::Table)>,
}

impl Manifests {
    fn read() -> Self {
        let root = root();
        let read = |path: PathBuf| -> toml::Table {
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).parse().unwrap()
        };
        let crates = CRATES
            .iter()
            .map(|&k| (k, read(if k == "xtask" { root.join("xtask/Cargo.toml") } else { root.join("crates").join(k).join("Cargo.toml") })))
            .collect();
        Manifests { root: read(root.join("Cargo.toml")), crates }
    }

    fn get(&self, krate: &str) -> &toml::Table {
        &self.crates.iter().find(|(k, _)| *k == krate).unwrap_or_else(|| panic!("no manifest for {krate}")).1
    }

    fn get_mut(&mut self, krate: &str) -> &mut toml::Table {
        &mut self.crates.iter_mut().find(|(k, _)| *k == krate).unwrap_or_else(|| panic!("no manifest for {krate}")).1
    }

    /// The packages `krate` depends on in `kind` (`dependencies`, `dev-dependencies` or
    /// `build-dependencies`), each by the package it names: the platform-specific tables
    /// (`[target.'cfg(unix)'.dependencies]`) and the old underscore spellings count too, and a
    /// renamed dependency (`web = { package = "axum" }`, directly or through the
    /// `[workspace.dependencies]` entry that `workspace = true` inherits) counts as its package.
    fn deps(&self, krate: &str, kind: &str) -> Vec<String> {
        let m = self.get(krate);
        let mut spellings = vec![kind.to_string()];
        if kind.contains('-') {
            spellings.push(kind.replace('-', "_"));
        }
        let mut sections: Vec<&toml::Table> = vec![m];
        for platform in m.get("target").and_then(|t| t.as_table()).into_iter().flat_map(|t| t.values()) {
            sections.push(platform.as_table().expect("[target.*] is a table"));
        }
        let tables = sections.iter().flat_map(|section| spellings.iter().filter_map(|s| section.get(s).and_then(|d| d.as_table())));
        let inherited = self.root.get("workspace").and_then(|w| w.get("dependencies")).and_then(|d| d.as_table());
        let mut out = Vec::new();
        for table in tables {
            for (key, spec) in table {
                let from_workspace = match spec.get("workspace").and_then(|w| w.as_bool()) {
                    Some(true) => inherited.and_then(|w| w.get(key)),
                    _ => None,
                };
                let package = spec.get("package").or_else(|| from_workspace.and_then(|w| w.get("package")));
                out.push(package.and_then(|p| p.as_str()).unwrap_or(key).to_string());
            }
        }
        out
    }

    /// Every arrow that points the wrong way, as a sentence.
    fn layering_problems(&self) -> Vec<String> {
        // What each library crate may depend on among the workspace's crates (normal and build
        // dependencies); dev-dependencies may add embed-testkit and lower crates.
        let allowed: &[(&str, &[&str])] = &[
            ("embed-core", &[]),
            ("embed-scoped", &["embed-core"]),
            ("embed-pool", &["embed-core"]),
            ("embed-server", &["embed-core", "embed-pool"]),
            ("embed-testkit", &["embed-core"]),
        ];
        let mut problems = Vec::new();
        for (krate, may) in allowed {
            for dep in self.deps(krate, "dependencies").into_iter().chain(self.deps(krate, "build-dependencies")) {
                if CRATES.contains(&dep.as_str()) && !may.contains(&dep.as_str()) {
                    problems.push(format!("{krate} depends on {dep}; it may depend on {may:?} only"));
                }
            }
        }
        let forbidden: &[(&str, &[&str], &str)] = &[
            ("embed-core", &["axum", "dashmap", "tower", "hyper", "reqwest"], "embed-core knows nothing of HTTP or pools"),
            ("embed-scoped", &["axum", "tower", "hyper"], "it must not know about HTTP"),
            ("embed-pool", &["axum", "tower", "hyper"], "it must not know about HTTP"),
        ];
        for (krate, names, why) in forbidden {
            for dep in self.deps(krate, "dependencies").into_iter().chain(self.deps(krate, "build-dependencies")) {
                if names.contains(&dep.as_str()) {
                    problems.push(format!("{krate} depends on {dep} ({why})"));
                }
            }
        }
        for krate in CRATES {
            for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
                if self.deps(krate, kind).iter().any(|d| d == "xtask") {
                    problems.push(format!("{krate} depends on xtask ({kind})"));
                }
            }
        }
        problems
    }
}

#[test]
fn dependencies_flow_one_way() {
    let problems = Manifests::read().layering_problems();
    assert!(problems.is_empty(), "arrows pointing the wrong way:\n{}", problems.join("\n"));
}

/// Merges the TOML `snippet` into `m` (tables merged, other values replaced).
fn plant(m: &mut toml::Table, snippet: &str) {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    merge(m, snippet.parse().expect("snippet is TOML"));
}

/// The manifest check can fail: a back-edge planted in each place the old check did not read
/// (a platform-specific table, a build-dependency, a renamed dependency, one renamed through
/// the workspace's table) is reported.
#[test]
fn the_manifest_check_sees_platform_build_and_renamed_dependencies() {
    let clean = Manifests::read();
    assert!(clean.layering_problems().is_empty());
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("embed-core", None, "[target.'cfg(unix)'.dependencies]\nembed-pool = { workspace = true }", "embed-core depends on embed-pool"),
        ("embed-scoped", None, "[target.x86_64-unknown-linux-gnu.build-dependencies]\nembed-pool = { path = \"../embed-pool\" }", "embed-scoped depends on embed-pool"),
        ("embed-pool", None, "[dependencies]\nscoped = { package = \"embed-scoped\", path = \"../embed-scoped\" }", "embed-pool depends on embed-scoped"),
        ("embed-testkit", None, "[build_dependencies]\nembed-server = { path = \"../embed-server\" }", "embed-testkit depends on embed-server"),
        (
            "embed-core",
            Some("[workspace.dependencies]\nweb = { version = \"0.8\", package = \"axum\" }"),
            "[dependencies]\nweb = { workspace = true }",
            "embed-core depends on axum",
        ),
        (
            "embed-pool",
            Some("[workspace.dependencies]\nserver = { path = \"crates/embed-server\", package = \"embed-server\" }"),
            "[target.'cfg(target_os = \"linux\")'.dependencies]\nserver = { workspace = true }",
            "embed-pool depends on embed-server",
        ),
        ("embed-server", None, "[target.'cfg(unix)'.dev-dependencies]\ntools = { package = \"xtask\", path = \"../../xtask\" }", "embed-server depends on xtask"),
    ];
    for (krate, workspace, snippet, expected) in cases {
        let mut m = Manifests::read();
        if let Some(w) = workspace {
            plant(&mut m.root, w);
        }
        plant(m.get_mut(krate), snippet);
        let problems = m.layering_problems();
        assert!(problems.iter().any(|p| p.starts_with(expected)), "planted in {krate}:\n{snippet}\nnot reported; got {problems:?}");
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
    for path in ["crates/embed-core/src/models", "crates/embed-core/src/nn"] {
        assert_none(path, "tokio", "model code runs on the worker thread");
        assert_none(path, "async ", "model code runs on the worker thread");
    }
}

/// Reading a model directory and preparing text touch no tensors: they stay testable and fast
/// without libtorch doing anything.
#[test]
fn config_and_text_preparation_use_no_tensors() {
    for path in ["crates/embed-core/src/model_dir", "crates/embed-core/src/text.rs", "crates/embed-core/src/source.rs"] {
        assert_none(path, "tch::", "configuration and tokenization are tensor-free");
        assert_none(path, "Tensor", "configuration and tokenization are tensor-free");
    }
}

/// Where `source`'s code (not its comments) names module `room` of the crate by path: as
/// `crate::room`, inside a grouped import (`use crate::{room::X, …}`), or as `super::room`
/// (not `std::room::`, nor a longer name ending in `room`). As `line: text`.
fn room_mentions(source: &str, room: &str) -> Vec<String> {
    let needle = format!("{room}::");
    let mut hits = Vec::new();
    for (i, line) in source.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")) {
        let named = line.match_indices(&needle).any(|(at, _)| {
            let before = &line[..at];
            if before.ends_with("::") {
                // `crate::room::`, `super::room::`; not `std::ffi::`.
                before.ends_with("crate::") || before.ends_with("super::")
            } else {
                // A segment of its own inside `use crate::{…}`; not the tail of a longer name.
                !before.chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_') && line.contains("crate::{")
            }
        });
        if named {
            hits.push(format!("{}: {}", i + 1, line.trim()));
        }
    }
    hits
}

/// The rooms of embed-core (folders or files under `crates/embed-core/src`) and the rooms each
/// must not name: every arrow points down, from the service through `runtime/` and `models/`
/// to `nn/`, then `model_dir/`, with `memory/` and `ffi.rs` at the bottom. `text.rs` prepares
/// inputs for the runtime and knows none of it; `types/` (the API's value types) names no room
/// that computes.
const ROOM_RULES: &[(&str, &[&str], &str)] = &[
    ("model_dir", &["nn", "models", "runtime", "service", "memory", "ffi", "text"], "a model directory is read without tensors or model code"),
    ("nn", &["models", "runtime", "service", "text", "types"], "the building blocks know no family, worker or request"),
    ("models", &["runtime", "service", "text"], "a family knows its blocks, not who runs it"),
    ("text.rs", &["runtime", "models", "nn", "service"], "text preparation hands its sequences up to the runtime"),
    ("memory", &["nn", "models", "runtime", "model_dir", "service", "text"], "memory accounting sits at the bottom"),
    ("ffi.rs", &["nn", "models", "runtime", "model_dir", "service", "text", "memory"], "the shim's declarations sit at the bottom"),
    ("runtime", &["service"], "the worker serves jobs; the service submits them and the worker knows none of its callers"),
    ("types", &["service", "runtime", "models", "nn", "text", "memory"], "the API's value types are data: no service, worker or tensor"),
];

/// Every arrow between embed-core's rooms that points up, as `file:line: text (why)`.
fn room_problems(src: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for (room, forbidden, why) in ROOM_RULES {
        let files = sources(&src.join(room));
        assert!(!files.is_empty(), "{room}: no sources (moved? update ROOM_RULES)");
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap();
            for other in *forbidden {
                for hit in room_mentions(&source, other) {
                    problems.push(format!("{}:{hit} ({room} must not use {other}: {why})", file.display()));
                }
            }
        }
    }
    problems
}

/// embed-core's rooms depend downwards only. In particular the three back-edges that once
/// held twenty files in one import circle stay gone: `nn/attention.rs` (was
/// `layers/attention.rs`) → `worker::is_out_of_memory`, `model_dir` (was `config.rs`) →
/// `models::{ArchConfig, Family}`, `text.rs` → `worker::Seq`.
#[test]
fn embed_core_rooms_depend_downwards() {
    let problems = room_problems(&root().join("crates/embed-core/src"));
    assert!(problems.is_empty(), "arrows between embed-core's rooms pointing up:\n{}", problems.join("\n"));
}

/// The room check can fail: each way of naming a room (a path, a grouped import, `super::`) is
/// seen, a longer name ending in the room's is not, and comments are skipped.
#[test]
fn the_room_check_sees_every_way_of_naming_a_room() {
    for planted in [
        "use crate::runtime::Seq;",
        "use crate::{Error, runtime::Seq};",
        "    if crate::runtime::is_out_of_memory(&msg) {",
        "use super::super::runtime::Seq;",
    ] {
        assert_eq!(room_mentions(planted, "runtime").len(), 1, "{planted:?} not seen");
    }
    for clean in ["use crate::my_runtime::Seq;", "// crate::runtime::Seq is the worker's", "let runtime = 1;", "let s = std::runtime::x();"] {
        assert!(room_mentions(clean, "runtime").is_empty(), "{clean:?} taken for a use of runtime");
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
