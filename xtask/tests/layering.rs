//! The workspace's layering, checked from the manifests: embed-core ← embed-scoped ← embed-pool
//! ← embed-server; embed-testkit only as a dev-dependency; nothing depends on xtask.
//! If this fails, an arrow points the wrong way: move the code, not the test. Module boundaries
//! inside a crate are checked from the sources (see `pool_state_imports_no_tokio`).

use std::path::Path;

fn manifest(root: &Path, krate: &str) -> toml::Table {
    let dir = if krate == "xtask" { root.join("xtask") } else { root.join("crates").join(krate) };
    std::fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap()
}

fn deps(m: &toml::Table, section: &str) -> Vec<String> {
    m.get(section).and_then(|d| d.as_table()).map(|t| t.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn dependencies_flow_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let layers = ["embed-core", "embed-scoped", "embed-pool", "embed-server"];
    let all = ["embed-core", "embed-scoped", "embed-pool", "embed-server", "embed-testkit", "xtask"];
    for (i, krate) in layers.iter().enumerate() {
        let m = manifest(root, krate);
        for dep in deps(&m, "dependencies").iter().chain(deps(&m, "build-dependencies").iter()) {
            if let Some(j) = layers.iter().position(|l| l == dep) {
                assert!(j < i, "{krate} depends on {dep}, a layer above it");
            }
            assert_ne!(dep, "embed-testkit", "{krate}: embed-testkit is for [dev-dependencies] only");
        }
        assert!(!deps(&m, "dependencies").iter().any(|d| d == "dashmap" || d == "axum") || i >= 2,
            "{krate} must not know about pools or HTTP");
    }
    let core = manifest(root, "embed-core");
    for forbidden in ["axum", "dashmap", "tower", "hyper"] {
        assert!(!deps(&core, "dependencies").iter().any(|d| d == forbidden), "embed-core depends on {forbidden}");
    }
    for krate in all {
        let m = manifest(root, krate);
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            assert!(!deps(&m, section).iter().any(|d| d == "xtask"), "{krate} depends on xtask");
        }
    }
}

/// The pool decides under its lock and acts outside it: the decisions (`embed-pool/src/state.rs`)
/// must stay plain functions over the state, testable without a runtime. If this fails, move the
/// async part to `tasks.rs` and pass its result in.
#[test]
fn pool_state_imports_no_tokio() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let path = root.join("crates/embed-pool/src/state.rs");
    let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Comments may name tokio (to say why it is absent); code may not.
    for (i, line) in source.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")) {
        assert!(!line.contains("tokio"), "{}:{}: uses tokio: {line}", path.display(), i + 1);
    }
}
