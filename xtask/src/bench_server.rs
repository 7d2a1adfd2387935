//! `cargo xtask bench --server`: the release `embed-server` on the CPU with one model loaded
//! twice, in f32 and in bf16 (prepacked for oneDNN, the default), every text of the corpus sent
//! over `/v1/embeddings` by 8 keep-alive clients of 32 texts per request (`examples/http_bench`);
//! rounds alternate between the dtypes so a noisy machine affects both alike, and after each
//! pair the machine's own bf16/f32 ratio on a 2048×768→3072 linear layer (the median is the
//! goal's denominator: one measurement moved 2.02-2.30 from run to run). Then the goal
//! of the CPU bf16 issue: the server's bf16/f32 at least 0.8 of the machine's. Writes
//! `bench-results/server-bf16.json`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::bench::{cpu_model, flag, median, run_capture};
use crate::setup;

/// Share of the machine's bf16/f32 linear-layer ratio the server must reach in bf16.
const GOAL: f64 = 0.8;

pub(crate) fn run(args: &[String]) -> Result<()> {
    let rounds: usize = flag(args, "--rounds").unwrap_or(3);
    let clients: usize = flag(args, "--clients").unwrap_or(8);
    let per_request: usize = flag(args, "--per-request").unwrap_or(32);
    if rounds == 0 || clients == 0 || per_request == 0 {
        bail!("--rounds, --clients and --per-request must be at least 1");
    }
    let env = setup::run(&setup::Options { bench: true, models: Vec::new() })?;
    let root = &env.root;
    let corpus = root.join("testdata/corpus.txt");
    let out_dir = root.join("bench-results");
    std::fs::create_dir_all(&out_dir)?;
    println!("bench: building embed-server, http_bench and linear_ratio (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-q", "-p", "embed-server", "--bin", "embed-server", "--example", "http_bench"])
        .args(["-p", "embed-core", "--example", "linear_ratio"])
        .status()?;
    if !built.success() {
        bail!("building the server bench failed");
    }
    let config = out_dir.join("server-bf16.toml");
    let model = env.model_dir.display().to_string();
    std::fs::write(
        &config,
        format!("bind = \"127.0.0.1:0\"\npreload = [\"f32\", \"bf16\"]\nmax_models = 2\n\n[models.f32]\nsource = {model:?}\ndtype = \"f32\"\n\n[models.bf16]\nsource = {model:?}\ndtype = \"bf16\"\n"),
    )?;
    let mut server = Command::new(root.join("target/release/embed-server"))
        .arg("--config")
        .arg(&config)
        .env("EMBED_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting embed-server")?;
    let result = measure(root, &server_url(&mut server)?, &corpus, rounds, clients, per_request);
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    let _ = server.wait();
    let (f32_tps, bf16_tps, linears) = result?;

    let figure = |key: &str| median(linears.iter().map(|l| l[key].as_f64().unwrap_or(f64::NAN)).collect());
    let machine = figure("ratio");
    let (f32_med, bf16_med) = (median(f32_tps.clone()), median(bf16_tps.clone()));
    let model_ratio = bf16_med / f32_med;
    let share = model_ratio / machine;
    let cpu = cpu_model();
    println!("\nserver on {cpu}, {clients} clients x {per_request} texts per request, {rounds} rounds each (medians):");
    println!("  f32  {f32_med:>8.1} texts/s   rounds {f32_tps:.1?}");
    println!("  bf16 {bf16_med:>8.1} texts/s   rounds {bf16_tps:.1?}");
    println!(
        "  server bf16/f32 {model_ratio:.2}; machine linear 2048x768->3072 bf16 {:.0} GFLOP/s, f32 {:.0}: {machine:.2} \
         (median of {} measured between the rounds: {:.2?}); the server gets {:.0} % of it (goal {:.0} %): {}",
        figure("bf16_gflops"),
        figure("f32_gflops"),
        linears.len(),
        linears.iter().map(|l| l["ratio"].as_f64().unwrap_or(f64::NAN)).collect::<Vec<_>>(),
        100.0 * share,
        100.0 * GOAL,
        if share >= GOAL { "met" } else { "MISSED" }
    );
    let json = serde_json::json!({
        "cpu": cpu, "clients": clients, "per_request": per_request, "rounds": rounds,
        "f32_texts_per_s": f32_tps, "bf16_texts_per_s": bf16_tps, "server_bf16_over_f32": model_ratio,
        "linear_layer": linears, "machine_ratio": machine, "share_of_machine": share, "goal": GOAL,
    });
    std::fs::write(out_dir.join("server-bf16.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

/// Reads the server's "listening on http://ADDR" line.
fn server_url(server: &mut std::process::Child) -> Result<String> {
    let stdout = server.stdout.take().context("server stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            return Ok(rest.split_whitespace().next().unwrap_or_default().to_string());
        }
    }
    bail!("embed-server exited before listening")
}

/// Alternating rounds of f32 and bf16, each pair followed by the machine's own linear-layer
/// ratio (so a noisy machine moves the ratio's denominator the way it moves the rounds); the
/// texts/s of each dtype and the linear layer's figures of each round.
fn measure(
    root: &std::path::Path,
    url: &str,
    corpus: &std::path::Path,
    rounds: usize,
    clients: usize,
    per_request: usize,
) -> Result<(Vec<f64>, Vec<f64>, Vec<serde_json::Value>)> {
    let (mut f32s, mut bf16s, mut linears) = (Vec::new(), Vec::new(), Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).to_string();
    for r in 0..rounds {
        for (model, sink) in [("f32", &mut f32s), ("bf16", &mut bf16s)] {
            let out = run_capture(
                Command::new(root.join("target/release/examples/http_bench"))
                    .arg(url)
                    .arg(corpus)
                    .args(["--clients", &clients.to_string(), "--per-request", &per_request.to_string(), "--rounds", "1", "--model", model]),
            )?;
            let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default()).context("http_bench output")?;
            let tps = v["texts_per_s"].as_f64().context("texts_per_s")?;
            println!("bench: round {}/{rounds} {model}: {tps:.1} texts/s", r + 1);
            sink.push(tps);
        }
        let out = run_capture(Command::new(root.join("target/release/examples/linear_ratio")).arg(&threads))?;
        linears.push(serde_json::from_str(out.trim()).context("linear_ratio output")?);
    }
    Ok((f32s, bf16s, linears))
}
