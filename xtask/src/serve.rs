//! `cargo xtask serve`: set up what is missing, build the server (release), and serve the
//! default model (all-MiniLM-L6-v2 from the local copy) on 127.0.0.1:8080. Extra arguments go
//! to `embed-server` (see `cargo xtask serve -- --help`).

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Result};

use crate::setup;

pub(crate) fn run(extra: &[String]) -> Result<()> {
    let env = setup::run(&setup::Options { bench: false, models: Vec::new() })?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // cargo's own progress stays visible: the first release build takes several minutes.
    println!("serve: building embed-server (release; the first build takes a few minutes)");
    let status = Command::new(&cargo).current_dir(&env.root).args(["build", "--release", "-p", "embed-server"]).status()?;
    if !status.success() {
        bail!("building embed-server failed");
    }
    let mut cmd = Command::new(env.root.join("target/release/embed-server"));
    let has = |flag: &str| extra.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if !has("--model") && !has("--config") && std::env::var_os("EMBED_MODELS").is_none() {
        cmd.arg("--model").arg(format!("all-MiniLM-L6-v2={}", env.model_dir.display()));
    }
    if !has("--bind") && std::env::var_os("EMBED_BIND").is_none() {
        cmd.args(["--bind", "127.0.0.1:8080"]);
    }
    cmd.args(extra.iter().filter(|a| *a != "--"));
    // Replace this process: Ctrl-C and SIGTERM reach the server directly.
    Err(cmd.exec().into())
}
