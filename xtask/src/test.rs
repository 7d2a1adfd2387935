//! `cargo xtask test`: setup if needed, then every test of the workspace, the CPU leak check and
//! its proof that a planted leak is caught, the leak check over a sharded checkpoint, the deployment checks, a `--check` of the fixture
//! generators, the multi-vector fixtures against FlagEmbedding and PyLate, and the cluster test (nginx in front of three replicas through a rolling restart)
//! with its negative control (without nginx's retries the restarts must lose requests). This is
//! what CI runs.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cluster_test, leak_check, python, setup};

pub(crate) fn run(extra: &[String]) -> Result<()> {
    let env = setup::run(&setup::Options { bench: false, models: Vec::new() })?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_step = |args: &[&str], what: &str| -> Result<()> {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&env.root).args(args);
        println!("test: {what}: {cmd:?}");
        if !cmd.status()?.success() {
            bail!("{what} failed; rerun with `cargo {}`", args.join(" "));
        }
        Ok(())
    };
    let mut all: Vec<&str> = vec!["test", "--workspace", "--all-targets", "--no-fail-fast"];
    all.extend(extra.iter().map(String::as_str));
    cargo_step(&all, "unit and integration tests")?;
    cargo_step(&["test", "--workspace", "--doc"], "doc tests")?;

    println!("test: the embed Python package (cargo xtask python --test: debug build, pytest against the real MiniLM)");
    python::build(&env, false)?;
    python::run_tests(&env, &[])?;

    println!("test: CPU leak check (cargo xtask leak-check --cycles 3)");
    let opts = leak_check::Options::parse(&["--cycles".into(), "3".into()])?;
    if !leak_check::run(&opts)? {
        bail!("the CPU leak check found leaks; rerun with `cargo xtask leak-check`");
    }
    println!("test: the leak check must catch a planted leak (cargo xtask leak-check --plant-leak --layers core)");
    let planted = leak_check::Options::parse(&["--cycles".into(), "2".into(), "--layers".into(), "core".into(), "--plant-leak".into()])?;
    // Caught as planted: by the allocator and RSS growth of the leaked tensor, not by any verdict.
    leak_check::planted_leak_caught(&leak_check::run_reports(&planted)?)
        .context("the leak check did NOT catch the planted leak as planted (embed-core feature `planted-leak`); rerun with `cargo xtask leak-check --cycles 2 --layers core --plant-leak`")?;
    println!("test: planted leak caught by the allocator and RSS figures, as it must be");

    println!("test: deployment files (deploy/check.py: hadolint, chart render, Kubernetes schemas, invariants)");
    let status = Command::new(&env.python).current_dir(&env.root).arg("deploy/check.py").status()?;
    if !status.success() {
        bail!("deploy/check.py failed; rerun with `.venv/bin/python deploy/check.py`");
    }

    // Fixture provenance: one random family's generator, the decoder rerankers' (transformers'
    // Qwen3-Reranker scoring, about 15 s), the multi-vector ones (BGE-M3 and PyLate layouts,
    // about 30 s on a busy 2-core machine) and the real MiniLM's reference, each recomputed and
    // compared with the committed files (about 70 s). The generators need the pinned
    // transformers / sentence-transformers of python/requirements-bench.txt.
    let bench_env = setup::run(&setup::Options { bench: true, models: Vec::new() })?;
    let scripts = [
        &["python/make_fixtures.py", "--check", "--only", "bert"][..],
        &["python/make_reranker_fixtures.py", "--check"],
        &["python/make_multivector_fixtures.py", "--check"],
        &["python/make_reference.py", "--check"],
        &["python/make_st_saved_fixture.py", "--check"],
    ];
    for script in scripts {
        println!("test: fixture provenance ({} {})", script[0], script[1..].join(" "));
        let status = Command::new(&bench_env.python).current_dir(&env.root).args(script).status()?;
        if !status.success() {
            bail!("{} --check failed; rerun with `.venv/bin/python {}`", script[0], script.join(" "));
        }
    }

    // The multi-vector references against FlagEmbedding's and PyLate's own code (issue 31): both
    // need transformers 4 / sentence-transformers 5, so they run in a venv of their own (about
    // 600 MB over the main venv's torch, installed once).
    println!("test: the multi-vector fixtures against FlagEmbedding's BGEM3FlagModel and PyLate's ColBERT (python/crosscheck_multivector.py)");
    crosscheck(&env)?;

    // The leak check over a sharded checkpoint (issue 30): the MiniLM split into three
    // safetensors shards with an index, churned by the core and pool layers; every shard's
    // weights must be released after each cycle like a single file's.
    let sharded = env.root.join("target/leak-check-sharded-minilm");
    println!("test: the leak check with a 3-shard copy of the MiniLM ({})", sharded.display());
    let status = Command::new(&bench_env.python)
        .current_dir(&env.root)
        .arg("bench/decoder_shape.py")
        .arg("shard")
        .arg(&env.model_dir)
        .arg(&sharded)
        .arg("3")
        .status()?;
    if !status.success() {
        bail!("sharding the MiniLM for the leak check failed (bench/decoder_shape.py shard)");
    }
    let opts = leak_check::Options::parse(&[
        "--cycles".into(),
        "2".into(),
        "--layers".into(),
        "core,pool".into(),
        "--model-dir".into(),
        sharded.display().to_string(),
    ])?;
    if !leak_check::run(&opts)? {
        bail!("the leak check found leaks with a sharded checkpoint; rerun with `cargo xtask leak-check --cycles 2 --layers core,pool --model-dir {}`", sharded.display());
    }

    println!("test: three replicas behind nginx through a rolling restart and a kill (cargo xtask cluster-test)");
    cluster_test::run(&[]).context("the cluster test failed; rerun with `cargo xtask cluster-test --keep-logs`")?;
    println!("test: the cluster test's negative control: nginx without retries must lose requests (cargo xtask cluster-test --negative-control)");
    cluster_test::negative_control().context("the negative control failed; rerun with `cargo xtask cluster-test --negative-control --keep-logs`")?;
    println!("test: all green");
    Ok(())
}

/// `cargo xtask crosscheck`: the multi-vector fixtures' references against FlagEmbedding's
/// `BGEM3FlagModel` and PyLate's `ColBERT` (`python/crosscheck_multivector.py`, in the venv of
/// `python/requirements-crosscheck.txt`). Part of `cargo xtask test`.
pub(crate) fn crosscheck(env: &setup::Env) -> Result<()> {
    let python = setup::crosscheck_python(env)?;
    let status = Command::new(&python).current_dir(&env.root).arg("python/crosscheck_multivector.py").status()?;
    if !status.success() {
        bail!("the multi-vector cross-check failed; rerun with `cargo xtask crosscheck`");
    }
    Ok(())
}
