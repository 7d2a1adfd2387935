//! `cargo xtask test`: setup if needed, then every test of the workspace. This is what CI runs.

use std::process::Command;

use anyhow::{bail, Result};

use crate::setup;

pub(crate) fn run(extra: &[String]) -> Result<()> {
    let env = setup::run(&setup::Options { bench: false })?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&env.root).args(["test", "--workspace", "--all-targets"]).args(extra);
    println!("test: {cmd:?}");
    if !cmd.status()?.success() {
        bail!("`cargo test --workspace` failed");
    }
    let mut doc = Command::new(&cargo);
    doc.current_dir(&env.root).args(["test", "--workspace", "--doc"]);
    println!("test: {doc:?}");
    if !doc.status()?.success() {
        bail!("doc tests failed");
    }
    let _ = env.python;
    let _ = env.model_dir;
    Ok(())
}
