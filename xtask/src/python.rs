//! `cargo xtask python [--release] [--test] [-- PYTEST_ARGS]`: builds the `embed` Python package
//! (crates/embed-python, PyO3 + maturin) and installs it into the project's venv; `--test` then
//! runs its pytest suite against the real MiniLM (what `cargo xtask test` does, debug build).
//!
//! `maturin develop` builds with cargo (same target dir, same `LIBTORCH`, so the extension's
//! rpath points at the venv's torch) and installs the package into the venv in editable form:
//! the pure-Python half is read from crates/embed-python/python/embed, where maturin also puts
//! the built `_native` extension (git-ignored).

use std::process::Command;

use anyhow::{bail, Result};

use crate::setup;

pub(crate) fn run(args: &[String]) -> Result<()> {
    let (ours, pytest_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut release = false;
    let mut test = false;
    for a in ours {
        match a.as_str() {
            "--release" => release = true,
            "--test" => test = true,
            other => bail!("python: unknown option {other:?} (--release, --test, -- PYTEST_ARGS)"),
        }
    }
    let env = setup::run(&setup::Options { bench: false, models: Vec::new() })?;
    build(&env, release)?;
    if test {
        run_tests(&env, pytest_args)?;
    }
    Ok(())
}

/// `maturin develop` into the project's venv.
pub(crate) fn build(env: &setup::Env, release: bool) -> Result<()> {
    let venv = env.python.parent().and_then(|bin| bin.parent()).expect("the venv's python is in bin/");
    let mut cmd = Command::new(venv.join("bin/maturin"));
    cmd.current_dir(&env.root)
        .args(["develop", "--manifest-path", "crates/embed-python/Cargo.toml"])
        .env("VIRTUAL_ENV", venv)
        // pyo3 builds against the venv's interpreter.
        .env("PYO3_PYTHON", &env.python);
    if release {
        cmd.arg("--release");
    }
    println!("python: building and installing the embed package ({}): {cmd:?}", if release { "release" } else { "debug" });
    if !cmd.status()?.success() {
        bail!("building the embed Python package failed; rerun with `cargo xtask python`");
    }
    Ok(())
}

/// The package's pytest suite (crates/embed-python/tests).
pub(crate) fn run_tests(env: &setup::Env, extra: &[String]) -> Result<()> {
    let mut cmd = Command::new(&env.python);
    cmd.current_dir(&env.root)
        .args(["-m", "pytest", "crates/embed-python/tests", "-q", "-p", "no:cacheprovider"])
        .args(extra)
        .env("EMBED_MINILM_DIR", &env.model_dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false");
    println!("python: the embed package's tests: {cmd:?}");
    if !cmd.status()?.success() {
        bail!("the embed Python package's tests failed; rerun with `cargo xtask python --test`");
    }
    Ok(())
}

/// `cargo xtask bench --python [--rounds N] [--threads N]`: the release package against
/// sentence-transformers in one process (python/bench_python.py); writes
/// bench-results/bench-python.json. Not part of `cargo xtask test` (speed is measured here, not
/// asserted in tests).
pub(crate) fn bench(args: &[String]) -> Result<()> {
    let rounds: usize = crate::bench::flag(args, "--rounds").unwrap_or(5);
    let threads: usize =
        crate::bench::flag(args, "--threads").unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    if rounds == 0 || threads == 0 {
        bail!("--rounds and --threads must be at least 1");
    }
    let env = setup::run(&setup::Options { bench: true, models: Vec::new() })?;
    build(&env, true)?;
    let out_dir = env.root.join("bench-results");
    std::fs::create_dir_all(&out_dir)?;
    let status = Command::new(&env.python)
        .current_dir(&env.root)
        .arg("python/bench_python.py")
        .arg(&env.model_dir)
        .arg("testdata/corpus.txt")
        .arg(rounds.to_string())
        .arg(threads.to_string())
        .arg(out_dir.join("bench-python.json"))
        .env("HF_HUB_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .status()?;
    if !status.success() {
        bail!("python/bench_python.py failed");
    }
    Ok(())
}
