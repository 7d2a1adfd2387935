//! `cargo xtask bench`: embed-core against sentence-transformers on the same corpus, model,
//! torch build and thread count, pair by pair in one run. Prints texts/s, tokens/s and ratios
//! (medians over rounds), checks the vectors against sentence-transformers' (cosine), and
//! writes `bench-results/bench.json`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup;

struct Round {
    texts_per_s: f64,
    tokens_per_s: f64,
    load_s: f64,
}

fn parse_rounds(stdout: &str) -> Vec<Round> {
    stdout
        .lines()
        .filter_map(|l| {
            let field = |name: &str| -> Option<f64> {
                let key = format!("\"{name}\":");
                let start = l.find(&key)? + key.len();
                let rest = &l[start..];
                let end = rest.find([',', '}']).unwrap_or(rest.len());
                rest[..end].trim().parse().ok()
            };
            Some(Round { texts_per_s: field("texts_per_s")?, tokens_per_s: field("tokens_per_s")?, load_s: field("load_s")? })
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run_capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read_vectors(path: &Path) -> Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let inner = text.trim().strip_prefix('[').and_then(|t| t.strip_suffix(']')).context("vectors: not a JSON array")?;
    inner
        .split("],")
        .map(|row| {
            row.trim().trim_start_matches('[').trim_end_matches(']').split(',').map(|x| Ok(x.trim().parse::<f64>()?)).collect()
        })
        .collect()
}

fn worst_cosine(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx: f64 = x.iter().map(|p| p * p).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|q| q * q).sum::<f64>().sqrt();
            dot / (nx * ny)
        })
        .fold(1.0, f64::min)
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let pairs: usize = flag(args, "--pairs").unwrap_or(3);
    let rounds: usize = flag(args, "--rounds").unwrap_or(2);
    let threads: usize = flag(args, "--threads").unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let env = setup::run(&setup::Options { bench: true })?;
    let root = &env.root;
    let corpus = root.join("testdata/corpus.txt");
    let out_dir = root.join("bench-results");
    std::fs::create_dir_all(&out_dir)?;

    println!("bench: building the Rust side (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-q", "-p", "embed-core", "--example", "throughput"])
        .status()?;
    if !status.success() {
        bail!("building the throughput example failed");
    }
    let rust_bin = root.join("target/release/examples/throughput");

    let mut st = Vec::new();
    let mut f32s = Vec::new();
    let mut bf16s = Vec::new();
    let st_vec = out_dir.join("vectors-st.json");
    let f32_vec = out_dir.join("vectors-f32.json");
    let bf16_vec = out_dir.join("vectors-bf16.json");
    for pair in 0..pairs {
        println!("bench: pair {}/{pairs} ({rounds} timed rounds each, {threads} threads)", pair + 1);
        let mut py = Command::new(&env.python);
        py.arg(root.join("bench/st_throughput.py"))
            .arg(&env.model_dir)
            .arg(&corpus)
            .arg(rounds.to_string())
            .arg(threads.to_string())
            .env("HF_HUB_OFFLINE", "1")
            .env("TOKENIZERS_PARALLELISM", "false");
        if pair == 0 {
            py.arg(&st_vec);
        }
        st.extend(parse_rounds(&run_capture(&mut py)?));
        for (dtype, sink, vec_path) in [("f32", &mut f32s, &f32_vec), ("bf16", &mut bf16s, &bf16_vec)] {
            let mut rs = Command::new(&rust_bin);
            rs.arg(&env.model_dir).arg(&corpus).arg(dtype).arg(rounds.to_string()).env("EMBED_THREADS", threads.to_string());
            if pair == 0 {
                rs.arg(vec_path);
            }
            sink.extend(parse_rounds(&run_capture(&mut rs)?));
        }
    }

    let st_vectors = read_vectors(&st_vec)?;
    let cos_f32 = worst_cosine(&read_vectors(&f32_vec)?, &st_vectors);
    let cos_bf16 = worst_cosine(&read_vectors(&bf16_vec)?, &st_vectors);
    let med = |r: &[Round], f: fn(&Round) -> f64| median(r.iter().map(f).collect());
    let st_tps = med(&st, |r| r.texts_per_s);
    let lines = [
        ("sentence-transformers f32", &st, f64::NAN),
        ("embed-core f32", &f32s, cos_f32),
        ("embed-core bf16", &bf16s, cos_bf16),
    ];
    let texts = std::fs::read_to_string(&corpus)?.lines().filter(|l| !l.trim().is_empty()).count();
    println!("\nall-MiniLM-L6-v2, CPU, {threads} threads, {texts} texts (testdata/corpus.txt), medians of {} rounds", pairs * rounds);
    println!("{:<28} {:>10} {:>11} {:>9} {:>8} {:>14}", "implementation", "texts/s", "tokens/s", "vs ST", "load s", "worst cos/ST");
    let mut json = Vec::new();
    for (name, rounds, cos) in lines {
        let tps = med(rounds, |r| r.texts_per_s);
        let toks = med(rounds, |r| r.tokens_per_s);
        let load = med(rounds, |r| r.load_s);
        let cos_s = if cos.is_nan() { "-".to_string() } else { format!("{cos:.6}") };
        println!("{name:<28} {tps:>10.1} {toks:>11.1} {:>8.2}x {load:>8.3} {cos_s:>14}", tps / st_tps);
        json.push(format!(
            "{{\"name\":\"{name}\",\"texts_per_s\":{tps:.1},\"tokens_per_s\":{toks:.1},\"ratio_vs_st\":{:.3},\"load_s\":{load:.3},\"worst_cosine_vs_st\":{}}}",
            tps / st_tps,
            if cos.is_nan() { "null".into() } else { format!("{cos:.7}") }
        ));
    }
    let targets = [
        ("f32 >= 1.6x sentence-transformers", med(&f32s, |r| r.texts_per_s) / st_tps >= 1.6),
        ("f32 cosine >= 0.99999", cos_f32 >= 0.99999),
        ("bf16 >= 3x sentence-transformers", med(&bf16s, |r| r.texts_per_s) / st_tps >= 3.0),
        ("bf16 cosine >= 0.9995", cos_bf16 >= 0.9995),
    ];
    println!();
    for (t, ok) in &targets {
        println!("target {t}: {}", if *ok { "met" } else { "MISSED" });
    }
    if !args.iter().any(|a| a == "--core-only") {
        extras(&cargo, root)?;
    }
    let path = out_dir.join("bench.json");
    std::fs::write(&path, format!("{{\"threads\":{threads},\"texts\":{texts},\"results\":[{}]}}\n", json.join(",")))?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// The pool's lease and evict+load swap times (criterion) and HTTP vs in-process throughput
/// (the server's load test, release build, 10 s per phase).
fn extras(cargo: &str, root: &Path) -> Result<()> {
    println!("\nbench: pool lease / evict+load swap (criterion, embed-pool/benches/pool.rs)");
    let out = Command::new(cargo).current_dir(root).args(["bench", "-q", "-p", "embed-pool", "--bench", "pool"]).output()?;
    if !out.status.success() {
        bail!("pool bench failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("time:") || (!l.starts_with(' ') && !l.is_empty() && !l.contains("Benchmarking"))) {
        println!("  {line}");
    }
    println!("\nbench: HTTP at 16 and 64 clients vs in-process (embed-server/tests/load.rs, release)");
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["test", "--release", "-q", "-p", "embed-server", "--test", "load", "--", "--nocapture"])
        .env("EMBED_LOAD_SECONDS", "10")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| l.starts_with("load:")) {
        println!("  {line}");
    }
    if !out.status.success() {
        bail!("load test failed:\n{stderr}");
    }
    Ok(())
}

fn flag(args: &[String], name: &str) -> Option<usize> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}
