//! `cargo xtask bench --server`: the release `embed-server` on the CPU with one model loaded
//! twice, in f32 and in bf16 (prepacked for oneDNN, the default), every text of the corpus sent
//! over `/v1/embeddings` by 8 keep-alive clients of 32 texts per request (`examples/http_bench`);
//! rounds alternate between the dtypes so a noisy machine affects both alike, and after each
//! pair the machine's own bf16/f32 ratio on a 2048×768→3072 linear layer (the median is the
//! goal's denominator: one measurement moved 2.02-2.30 from run to run). Then the goal
//! of the CPU bf16 issue: the server's bf16/f32 at least 0.8 of the machine's. Writes
//! `bench-results/server-bf16.json`.
//!
//! Every timed round's vectors are checked against embed-core's in-process f32 vectors of the
//! same corpus (`examples/throughput`, computed before the rounds), item by item by cosine:
//! f32 at least [`F32_MIN_COSINE`], bf16 at least [`BF16_MIN_COSINE`]. A vector that does not
//! match or is NaN stops the run at that round. Exits non-zero on a broken run (a mismatched
//! vector, a figure that is not a number) and, after reporting it, on a missed goal.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::bench::{check_vectors, cpu_model, flag, median, read_vectors, run_capture};
use crate::setup;

/// Share of the machine's bf16/f32 linear-layer ratio the server must reach in bf16.
const GOAL: f64 = 0.8;
/// The server's f32 vectors against the in-process f32 ones: the same model and code, only the
/// batches differ (as `cargo xtask bench`'s f32 bound).
const F32_MIN_COSINE: f64 = 0.99999;
/// The server's bf16 vectors against the in-process f32 ones (as `cargo xtask bench`'s bf16
/// bound against sentence-transformers).
const BF16_MIN_COSINE: f64 = 0.9995;

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
        .args(["-p", "embed-core", "--example", "linear_ratio", "--example", "throughput"])
        .status()?;
    if !built.success() {
        bail!("building the server bench failed");
    }
    // The reference every round's vectors are checked against: embed-core in-process, f32.
    println!("bench: in-process f32 vectors of the corpus (the reference for the server's)");
    let reference_path = out_dir.join("server-reference-f32.json");
    run_capture(
        Command::new(root.join("target/release/examples/throughput"))
            .arg(&env.model_dir)
            .arg(&corpus)
            .args(["f32", "1"])
            .arg(&reference_path),
    )?;
    let reference = read_vectors(&reference_path)?;
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
    let result = server_url(&mut server).and_then(|url| {
        let load = Load { url: &url, corpus: &corpus, rounds, clients, per_request };
        measure(root, &load, &reference, &out_dir)
    });
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    let _ = server.wait();
    let Rounds { f32_tps, bf16_tps, linears, worst } = result?;

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
    println!(
        "  vectors of every round vs in-process f32 ({} texts): worst cosine f32 {:.6} (>= {F32_MIN_COSINE}), bf16 {:.6} (>= {BF16_MIN_COSINE})",
        reference.len(),
        worst[0],
        worst[1]
    );
    let outcome = judge(&[("f32 texts/s", f32_med), ("bf16 texts/s", bf16_med), ("machine bf16/f32", machine), ("share of the machine's ratio", share)]);
    let json = serde_json::json!({
        "cpu": cpu, "clients": clients, "per_request": per_request, "rounds": rounds,
        "f32_texts_per_s": f32_tps, "bf16_texts_per_s": bf16_tps, "server_bf16_over_f32": model_ratio,
        "linear_layer": linears, "machine_ratio": machine, "share_of_machine": share, "goal": GOAL,
        "worst_cosine_vs_in_process_f32": {"f32": worst[0], "bf16": worst[1], "texts": reference.len()},
        "verdict": match &outcome { Ok(()) => "met".to_string(), Err(e) => e.to_string() },
    });
    std::fs::write(out_dir.join("server-bf16.json"), serde_json::to_string_pretty(&json)?)?;
    outcome.map_err(|e| anyhow::anyhow!("bench --server: {e}; see bench-results/server-bf16.json"))
}

/// Why a run fails: figures that are not numbers (a broken run), or a share of the machine's
/// ratio below [`GOAL`] (the goal missed). A mismatched vector fails earlier, in [`measure`].
#[derive(Debug, PartialEq)]
enum Outcome {
    Broken(String),
    Missed(f64),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Broken(what) => write!(f, "broken run: {what} is not a positive number"),
            Outcome::Missed(share) => write!(f, "goal MISSED: bf16/f32 is {:.0} % of the machine's, goal {:.0} %", 100.0 * share, 100.0 * GOAL),
        }
    }
}

/// The verdict on the named figures, the last of which is the share of the machine's ratio: any
/// that is NaN, infinite or not above zero makes the run broken; then the goal.
fn judge(figures: &[(&str, f64)]) -> Result<(), Outcome> {
    if let Some((what, _)) = figures.iter().find(|(_, x)| !(x.is_finite() && *x > 0.0)) {
        return Err(Outcome::Broken((*what).to_string()));
    }
    let share = figures.last().map_or(f64::NAN, |(_, x)| *x);
    if share >= GOAL {
        Ok(())
    } else {
        Err(Outcome::Missed(share))
    }
}

/// Reads http_bench's `--vectors` file (little-endian f32, one vector after another) as vectors
/// of `dim` values; a length that is not a whole number of them is an error.
fn read_raw_vectors(path: &std::path::Path, dim: usize) -> Result<Vec<Vec<f64>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if dim == 0 || bytes.len() % (4 * dim) != 0 {
        bail!("{}: {} bytes is not a whole number of {dim}-value f32 vectors", path.display(), bytes.len());
    }
    let values: Vec<f64> = bytes.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
    Ok(values.chunks(dim).map(<[f64]>::to_vec).collect())
}

/// Reads the server's "listening on http://ADDR" line, then keeps reading (and passing on) what
/// the server prints after it: a closed pipe would kill the server at its next line.
pub(crate) fn server_url(server: &mut std::process::Child) -> Result<String> {
    let stdout = server.stdout.take().context("server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| println!("embed-server: {l}")));
            return Ok(rest.split_whitespace().next().unwrap_or_default().to_string());
        }
    }
    bail!("embed-server exited before listening")
}

/// Alternating rounds of f32 and bf16, each pair followed by the machine's own linear-layer
/// ratio (so a noisy machine moves the ratio's denominator the way it moves the rounds); the
/// texts/s of each dtype, the linear layer's figures of each round, and the worst cosine of each
/// dtype's vectors against `reference` over all rounds (an error at the first round whose
/// vectors do not match).
fn measure(root: &std::path::Path, load: &Load, reference: &[Vec<f64>], out_dir: &std::path::Path) -> Result<Rounds> {
    let Load { url, corpus, rounds, clients, per_request } = *load;
    let (mut f32s, mut bf16s, mut linears) = (Vec::new(), Vec::new(), Vec::new());
    let mut worst = [1.0f64; 2];
    let dim = reference.first().map_or(0, Vec::len);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).to_string();
    let vectors = out_dir.join("server-vectors.f32");
    for r in 0..rounds {
        for (i, (model, sink, min)) in [("f32", &mut f32s, F32_MIN_COSINE), ("bf16", &mut bf16s, BF16_MIN_COSINE)].into_iter().enumerate() {
            let _ = std::fs::remove_file(&vectors);
            let out = run_capture(
                Command::new(root.join("target/release/examples/http_bench"))
                    .arg(url)
                    .arg(corpus)
                    .args(["--clients", &clients.to_string(), "--per-request", &per_request.to_string(), "--rounds", "1", "--model", model])
                    .arg("--vectors")
                    .arg(&vectors),
            )?;
            let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default()).context("http_bench output")?;
            let tps = v["texts_per_s"].as_f64().context("texts_per_s")?;
            let cos = check_vectors(&read_raw_vectors(&vectors, dim)?, reference, min)
                .map_err(|e| anyhow::anyhow!("broken run: round {} {model}: the server's vectors against the in-process f32 ones: {e}", r + 1))?;
            worst[i] = worst[i].min(cos);
            println!("bench: round {}/{rounds} {model}: {tps:.1} texts/s, worst cosine vs in-process f32 {cos:.6}", r + 1);
            sink.push(tps);
        }
        let out = run_capture(Command::new(root.join("target/release/examples/linear_ratio")).arg(&threads))?;
        linears.push(serde_json::from_str(out.trim()).context("linear_ratio output")?);
    }
    Ok(Rounds { f32_tps: f32s, bf16_tps: bf16s, linears, worst })
}

/// The load `http_bench` puts on the server each round.
#[derive(Clone, Copy)]
struct Load<'a> {
    url: &'a str,
    corpus: &'a std::path::Path,
    rounds: usize,
    clients: usize,
    per_request: usize,
}

/// What [`measure`] measured: texts/s of each round per dtype, the linear layer's figures after
/// each pair, and the worst cosine of the f32 and of the bf16 vectors over every round.
struct Rounds {
    f32_tps: Vec<f64>,
    bf16_tps: Vec<f64>,
    linears: Vec<serde_json::Value>,
    worst: [f64; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(share: f64) -> Vec<(&'static str, f64)> {
        vec![("f32 texts/s", 400.0), ("bf16 texts/s", 700.0), ("machine bf16/f32", 2.1), ("share of the machine's ratio", share)]
    }

    #[test]
    fn the_goal_is_met_or_missed() {
        assert_eq!(judge(&figures(0.83)), Ok(()));
        assert_eq!(judge(&figures(0.8)), Ok(()));
        assert_eq!(judge(&figures(0.72)), Err(Outcome::Missed(0.72)));
    }

    #[test]
    fn a_figure_that_is_not_a_number_is_a_broken_run() {
        assert_eq!(judge(&figures(f64::NAN)), Err(Outcome::Broken("share of the machine's ratio".into())));
        let mut nan_rate = figures(0.9);
        nan_rate[1].1 = f64::NAN;
        assert_eq!(judge(&nan_rate), Err(Outcome::Broken("bf16 texts/s".into())));
        let mut no_machine = figures(0.9);
        no_machine[2].1 = f64::INFINITY;
        assert!(matches!(judge(&no_machine), Err(Outcome::Broken(_))));
        let mut zero = figures(0.9);
        zero[0].1 = 0.0;
        assert!(matches!(judge(&zero), Err(Outcome::Broken(_))));
    }

    #[test]
    fn raw_vectors_need_whole_rows() {
        let dir = std::env::temp_dir().join(format!("bench-server-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.f32");
        let bytes: Vec<u8> = [1.0f32, 0.0, 0.5, f32::NAN].iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&path, &bytes).unwrap();
        let v = read_raw_vectors(&path, 2).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], vec![1.0, 0.0]);
        assert!(v[1][1].is_nan());
        assert!(read_raw_vectors(&path, 3).is_err(), "4 values are not rows of 3");
        assert!(read_raw_vectors(&path, 0).is_err());
        // A NaN vector from the server fails the cosine check.
        let reference = vec![vec![1.0, 0.0], vec![0.6, 0.8]];
        assert!(check_vectors(&v, &reference, F32_MIN_COSINE).unwrap_err().contains("item 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
