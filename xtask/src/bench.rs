//! `cargo xtask bench`: embed-core (f32, bf16, int8) against sentence-transformers on the same
//! corpus, model, torch build, thread count and warm-up, pair by pair in one run. Prints texts/s, tokens/s and
//! ratios (medians over rounds), checks every pair's vectors against that pair's
//! sentence-transformers vectors (cosine, item by item), and writes `bench-results/bench.json`.
//! Exits non-zero when a target is missed, a vector does not match, or a side ran with another
//! thread count than asked for.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup;

/// One timed round as a side prints it (one JSON object per line).
#[derive(Debug, Clone, PartialEq)]
struct Round {
    texts_per_s: f64,
    tokens_per_s: f64,
    load_s: f64,
    /// Intra-op threads the side ran with, as torch reported them where inference runs.
    threads: u64,
    /// The model's weight bytes as loaded (embed-core sides; 0 where not reported).
    weight_bytes: u64,
}

fn parse_rounds(stdout: &str) -> Result<Vec<Round>> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).with_context(|| format!("round line {l:?}"))?;
            let f = |k: &str| v[k].as_f64().with_context(|| format!("{k} missing in {l:?}"));
            Ok(Round {
                texts_per_s: f("texts_per_s")?,
                tokens_per_s: f("tokens_per_s")?,
                load_s: f("load_s")?,
                threads: v["threads"].as_u64().with_context(|| format!("threads missing in {l:?}"))?,
                weight_bytes: v["weight_bytes"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
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

pub(crate) fn run_capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads a JSON array of vectors. `NaN` (which both sides print for NaN, though JSON has no
/// such token) is read as NaN so that the comparison can name the item.
pub(crate) fn read_vectors(path: &Path) -> Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_vectors(&text).with_context(|| format!("parsing {}", path.display()))
}

fn parse_vectors(text: &str) -> Result<Vec<Vec<f64>>> {
    let inner = text.trim().strip_prefix('[').and_then(|t| t.strip_suffix(']')).context("not a JSON array")?.trim();
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(']')
        .map(|row| row.trim().trim_start_matches(',').trim())
        .filter(|row| !row.is_empty())
        .map(|row| {
            let row = row.strip_prefix('[').with_context(|| format!("row {row:?} is not an array"))?;
            if row.trim().is_empty() {
                return Ok(Vec::new());
            }
            row.split(',').map(|x| x.trim().parse::<f64>().with_context(|| format!("value {x:?}"))).collect()
        })
        .collect()
}

/// Cosine margin of a near tie (as `embed_testkit::NEAR_TIE_COSINE`): neighbours whose
/// similarities differ by less than this swap places unnoticed by a search user.
pub(crate) const NEAR_TIE_COSINE: f64 = 0.005;

/// Each item's `k` nearest neighbours under `got` against those under `reference` (cosine, the
/// item itself left out): the share of items with the same set, the mean share kept, and the
/// share whose top `k` under `got` all sit, by `reference`'s similarities, within
/// [`NEAR_TIE_COSINE`] of `reference`'s k-th neighbour (the same set up to near ties).
pub(crate) fn same_top_k(got: &[Vec<f64>], reference: &[Vec<f64>], k: usize) -> TopK {
    let unit = |v: &[Vec<f64>]| -> Vec<Vec<f64>> {
        v.iter().map(|x| {
            let n = x.iter().map(|p| p * p).sum::<f64>().sqrt().max(1e-30);
            x.iter().map(|p| p / n).collect()
        }).collect()
    };
    let dot = |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
    // The top k as a sorted set, and the k-th similarity.
    let top = |v: &[Vec<f64>], i: usize| -> (Vec<usize>, f64) {
        let mut s: Vec<(f64, usize)> = (0..v.len()).filter(|&j| j != i).map(|j| (dot(&v[i], &v[j]), j)).collect();
        let k = k.min(s.len());
        s.select_nth_unstable_by(k.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
        let kth = s[k.saturating_sub(1)].0;
        let mut set: Vec<usize> = s[..k].iter().map(|&(_, j)| j).collect();
        set.sort_unstable();
        (set, kth)
    };
    let (a, b) = (unit(got), unit(reference));
    if a.len() != b.len() || a.len() <= k || k == 0 {
        return TopK { same_set: f64::NAN, kept: f64::NAN, near_tie: f64::NAN };
    }
    let (mut same, mut kept, mut near) = (0usize, 0usize, 0usize);
    for i in 0..a.len() {
        let ((x, _), (y, kth)) = (top(&a, i), top(&b, i));
        same += usize::from(x == y);
        kept += x.iter().filter(|j| y.contains(j)).count();
        near += usize::from(x.iter().all(|&j| dot(&b[i], &b[j]) >= kth - NEAR_TIE_COSINE));
    }
    let n = a.len() as f64;
    TopK { same_set: same as f64 / n, kept: kept as f64 / (n * k as f64), near_tie: near as f64 / n }
}

/// See [`same_top_k`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TopK {
    pub(crate) same_set: f64,
    pub(crate) kept: f64,
    pub(crate) near_tie: f64,
}

/// Compares `got` with `reference` item by item: the same number of vectors, each of the same
/// length, each with cosine at least `min`. NaN fails (a fold with `f64::min` would skip it).
/// Returns the worst cosine, or every failing item in the error.
pub(crate) fn check_vectors(got: &[Vec<f64>], reference: &[Vec<f64>], min: f64) -> Result<f64, String> {
    if got.len() != reference.len() {
        return Err(format!("{} vectors, expected {}", got.len(), reference.len()));
    }
    let mut worst = 1.0f64;
    let mut failures = Vec::new();
    for (i, (x, y)) in got.iter().zip(reference).enumerate() {
        if x.len() != y.len() {
            failures.push(format!("item {i}: length {}, expected {}", x.len(), y.len()));
            continue;
        }
        let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        let nx: f64 = x.iter().map(|p| p * p).sum::<f64>().sqrt();
        let ny: f64 = y.iter().map(|q| q * q).sum::<f64>().sqrt();
        let c = dot / (nx * ny);
        // `c >= min` is false for NaN (and a zero vector gives NaN here too).
        if c >= min {
            worst = worst.min(c);
        } else {
            failures.push(format!("item {i}: cosine {c}"));
        }
    }
    if failures.is_empty() {
        Ok(worst)
    } else {
        let shown: Vec<_> = failures.iter().take(5).cloned().collect();
        Err(format!("{} of {} items below {min}: {}{}", failures.len(), got.len(), shown.join("; "), if failures.len() > 5 { "; …" } else { "" }))
    }
}

/// The figures the verdicts judge.
struct Measured<'a> {
    f32_ratio: f64,
    bf16_ratio: f64,
    int8_ratio: f64,
    cos_f32: &'a Result<f64, String>,
    cos_bf16: &'a Result<f64, String>,
    cos_int8: &'a Result<f64, String>,
    /// int8's weight bytes over f32's.
    int8_weights: f64,
}

/// The verdicts: `(what, met)` per target. Ratios and cosines that are NaN count as missed.
fn targets(m: &Measured) -> Vec<(String, bool)> {
    let Measured { f32_ratio, bf16_ratio, int8_ratio, cos_f32, cos_bf16, cos_int8, int8_weights } = *m;
    let cos = |name: &str, min: f64, r: &Result<f64, String>| match r {
        Ok(c) => (format!("{name} cosine >= {min} (worst {c:.6})"), *c >= min),
        Err(e) => (format!("{name} cosine >= {min}: {e}"), false),
    };
    vec![
        (format!("f32 >= 1.6x sentence-transformers ({f32_ratio:.2}x)"), f32_ratio >= 1.6),
        cos("f32", F32_MIN_COSINE, cos_f32),
        (format!("bf16 >= 3x sentence-transformers ({bf16_ratio:.2}x)"), bf16_ratio >= 3.0),
        cos("bf16", BF16_MIN_COSINE, cos_bf16),
        (format!("int8 >= 4x sentence-transformers ({int8_ratio:.2}x)"), int8_ratio >= 4.0),
        cos("int8", INT8_MIN_COSINE, cos_int8),
        (format!("int8 weights <= 30 % of f32's ({:.1} %)", 100.0 * int8_weights), int8_weights <= 0.30),
    ]
}

const F32_MIN_COSINE: f64 = 0.99999;
const BF16_MIN_COSINE: f64 = 0.9995;
const INT8_MIN_COSINE: f64 = 0.995;

pub(crate) fn run(args: &[String]) -> Result<()> {
    let pairs: usize = flag(args, "--pairs").unwrap_or(3);
    let rounds: usize = flag(args, "--rounds").unwrap_or(2);
    let threads: usize = flag(args, "--threads").unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    if pairs == 0 || rounds == 0 || threads == 0 {
        bail!("--pairs, --rounds and --threads must be at least 1");
    }
    // The default model, or one `setup --model NAME` installs (that flag is passed on).
    let model: Option<String> = flag(args, "--model");
    let env = setup::run(&setup::Options { bench: true, models: model.iter().cloned().collect() })?;
    let root = &env.root;
    let model_dir = match &model {
        Some(m) => root.join(".models").join(m),
        None => env.model_dir.clone(),
    };
    let model_name = model.clone().unwrap_or_else(|| "all-MiniLM-L6-v2".into());
    let corpus = root.join("testdata/corpus.txt");
    let out_dir = root.join("bench-results");
    std::fs::create_dir_all(&out_dir)?;

    println!("bench: building the Rust side (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-q", "-p", "embed-core", "--example", "throughput", "--example", "linear_ratio"])
        .status()?;
    if !status.success() {
        bail!("building the throughput example failed");
    }
    let rust_bin = root.join("target/release/examples/throughput");

    let mut st = Vec::new();
    let mut f32s = Vec::new();
    let mut bf16s = Vec::new();
    let mut int8s = Vec::new();
    // int8's top-5 neighbours over the corpus against f32's, per pair: (same set, kept).
    let mut int8_top5 = Vec::new();
    // Worst cosine over every pair (each pair's vectors against that pair's sentence-transformers
    // vectors); the first failure is kept.
    let mut cos_f32: Result<f64, String> = Ok(1.0);
    let mut cos_bf16: Result<f64, String> = Ok(1.0);
    let mut cos_int8: Result<f64, String> = Ok(1.0);
    for pair in 0..pairs {
        println!("bench: pair {}/{pairs} ({rounds} timed rounds each, {threads} threads)", pair + 1);
        let st_vec = out_dir.join(format!("vectors-st-{pair}.json"));
        let mut py = Command::new(&env.python);
        py.arg(root.join("bench/st_throughput.py"))
            .arg(&model_dir)
            .arg(&corpus)
            .arg(rounds.to_string())
            .arg(threads.to_string())
            .arg(&st_vec)
            .env("HF_HUB_OFFLINE", "1")
            .env("TOKENIZERS_PARALLELISM", "false");
        st.extend(parse_rounds(&run_capture(&mut py)?)?);
        let st_vectors = read_vectors(&st_vec)?;
        let sides = [
            ("f32", &mut f32s, &mut cos_f32, F32_MIN_COSINE),
            ("bf16", &mut bf16s, &mut cos_bf16, BF16_MIN_COSINE),
            ("int8", &mut int8s, &mut cos_int8, INT8_MIN_COSINE),
        ];
        for (dtype, sink, cos, min) in sides {
            let vec_path = out_dir.join(format!("vectors-{dtype}-{pair}.json"));
            let mut rs = Command::new(&rust_bin);
            rs.arg(&model_dir).arg(&corpus).arg(dtype).arg(rounds.to_string()).arg(&vec_path).env("EMBED_THREADS", threads.to_string());
            sink.extend(parse_rounds(&run_capture(&mut rs)?)?);
            let checked = check_vectors(&read_vectors(&vec_path)?, &st_vectors, min).map_err(|e| format!("pair {}: {e}", pair + 1));
            *cos = match (cos.clone(), checked) {
                (Ok(a), Ok(b)) => Ok(a.min(b)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
        }
        let f32_vectors = read_vectors(&out_dir.join(format!("vectors-f32-{pair}.json")))?;
        int8_top5.push(same_top_k(&read_vectors(&out_dir.join(format!("vectors-int8-{pair}.json")))?, &f32_vectors, 5));
    }

    let mut problems = Vec::new();
    for (name, rs) in [("sentence-transformers", &st), ("embed-core f32", &f32s), ("embed-core bf16", &bf16s), ("embed-core int8", &int8s)] {
        if rs.len() != pairs * rounds {
            problems.push(format!("{name}: {} timed rounds reported, expected {}", rs.len(), pairs * rounds));
        }
        let seen: std::collections::BTreeSet<u64> = rs.iter().map(|r| r.threads).collect();
        if seen.iter().any(|&t| t != threads as u64) {
            problems.push(format!("{name} ran with {seen:?} intra-op threads where inference runs, asked for {threads}"));
        }
    }
    let med = |r: &[Round], f: fn(&Round) -> f64| median(r.iter().map(f).collect());
    let st_tps = med(&st, |r| r.texts_per_s);
    let show = |r: &Result<f64, String>| r.as_ref().ok().copied().unwrap_or(f64::NAN);
    let lines = [
        ("sentence-transformers f32", &st, None),
        ("embed-core f32", &f32s, Some(show(&cos_f32))),
        ("embed-core bf16", &bf16s, Some(show(&cos_bf16))),
        ("embed-core int8", &int8s, Some(show(&cos_int8))),
    ];
    let texts = std::fs::read_to_string(&corpus)?.lines().filter(|l| !l.trim().is_empty()).count();
    println!("\n{model_name}, CPU, {threads} threads, {texts} texts (testdata/corpus.txt), medians of {} rounds", pairs * rounds);
    println!(
        "{:<28} {:>10} {:>11} {:>9} {:>8} {:>8} {:>14} {:>11}",
        "implementation", "texts/s", "tokens/s", "vs ST", "load s", "threads", "worst cos/ST", "weights MB"
    );
    let mut json = Vec::new();
    for (name, rounds, cos) in lines {
        let tps = med(rounds, |r| r.texts_per_s);
        let toks = med(rounds, |r| r.tokens_per_s);
        let load = med(rounds, |r| r.load_s);
        let worker_threads = rounds.first().map(|r| r.threads).unwrap_or(0);
        let weight_bytes = rounds.first().map(|r| r.weight_bytes).unwrap_or(0);
        let weights = if weight_bytes > 0 { format!("{:.1}", weight_bytes as f64 / 1e6) } else { "-".into() };
        let cos_s = match cos {
            None => "-".to_string(),
            Some(c) if c.is_nan() => "MISMATCH".to_string(),
            Some(c) => format!("{c:.6}"),
        };
        println!("{name:<28} {tps:>10.1} {toks:>11.1} {:>8.2}x {load:>8.3} {worker_threads:>8} {cos_s:>14} {weights:>11}", tps / st_tps);
        json.push(serde_json::json!({
            "name": name, "texts_per_s": tps, "tokens_per_s": toks, "ratio_vs_st": tps / st_tps, "load_s": load,
            "threads": worker_threads, "worst_cosine_vs_st": cos.filter(|c| !c.is_nan()),
            "weight_bytes": (weight_bytes > 0).then_some(weight_bytes),
        }));
    }
    let top5_same = median(int8_top5.iter().map(|t| t.same_set).collect());
    let top5_kept = median(int8_top5.iter().map(|t| t.kept).collect());
    let top5_near = median(int8_top5.iter().map(|t| t.near_tie).collect());
    println!(
        "int8 retrieval over the corpus: each text's top-5 neighbours under int8 are f32's set for {:.1} % of texts \
         ({:.1} % up to near ties, within {NEAR_TIE_COSINE} cosine of f32's 5th), {:.1} % of the neighbours kept",
        100.0 * top5_same,
        100.0 * top5_near,
        100.0 * top5_kept
    );
    let weights_of = |r: &[Round]| r.first().map_or(f64::NAN, |r| r.weight_bytes as f64);
    let int8_weights = weights_of(&int8s) / weights_of(&f32s);
    // What the machine's matmul gives in bf16 against f32, beside what the model gets.
    let linear: serde_json::Value = serde_json::from_str(
        run_capture(Command::new(root.join("target/release/examples/linear_ratio")).arg(threads.to_string()))?.trim(),
    )?;
    let model_ratio = med(&bf16s, |r| r.texts_per_s) / med(&f32s, |r| r.texts_per_s);
    let machine_ratio = linear["ratio"].as_f64().unwrap_or(f64::NAN);
    println!(
        "\nmachine ({}): linear 2048x768->3072 bf16 {:.0} GFLOP/s, f32 {:.0} GFLOP/s: bf16/f32 {machine_ratio:.2}; \
         the model's bf16/f32 {model_ratio:.2}, {:.0} % of the machine's",
        cpu_model(),
        linear["bf16_gflops"].as_f64().unwrap_or(f64::NAN),
        linear["f32_gflops"].as_f64().unwrap_or(f64::NAN),
        100.0 * model_ratio / machine_ratio
    );
    let ratio = |r: &[Round]| med(r, |r| r.texts_per_s) / st_tps;
    let verdicts = targets(&Measured {
        f32_ratio: ratio(&f32s),
        bf16_ratio: ratio(&bf16s),
        int8_ratio: ratio(&int8s),
        cos_f32: &cos_f32,
        cos_bf16: &cos_bf16,
        cos_int8: &cos_int8,
        int8_weights,
    });
    println!();
    for (t, ok) in &verdicts {
        println!("target {t}: {}", if *ok { "met" } else { "MISSED" });
    }
    for p in &problems {
        println!("bench: {p}");
    }
    let path = out_dir.join("bench.json");
    let report = serde_json::json!({
        "model": model_name, "threads": threads, "texts": texts, "results": json,
        "cpu": cpu_model(), "linear_layer": linear, "model_bf16_over_f32": model_ratio,
        "int8_top5_vs_f32": {"same_set": top5_same, "kept": top5_kept, "near_tie": top5_near, "near_tie_cosine": NEAR_TIE_COSINE},
        "targets": verdicts.iter().map(|(t, ok)| serde_json::json!({"target": t, "met": ok})).collect::<Vec<_>>(),
        "problems": problems,
    });
    std::fs::write(&path, format!("{report}\n"))?;
    println!("\nwrote {}", path.display());
    if !args.iter().any(|a| a == "--core-only") {
        extras(&cargo, root)?;
    }
    let missed = verdicts.iter().filter(|(_, ok)| !ok).count();
    if missed > 0 || !problems.is_empty() {
        bail!("bench: {missed} target(s) missed, {} problem(s); see above and {}", problems.len(), path.display());
    }
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

/// The CPU's name from `/proc/cpuinfo`, printed with every figure (machines change).
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into())
}

pub(crate) fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[&[f64]] = &[&[1.0, 0.0, 0.0], &[0.0, 0.6, 0.8]];

    fn rows(r: &[&[f64]]) -> Vec<Vec<f64>> {
        r.iter().map(|x| x.to_vec()).collect()
    }

    #[test]
    fn matching_vectors_pass() {
        let worst = check_vectors(&rows(GOOD), &rows(GOOD), 0.99999).unwrap();
        assert!((worst - 1.0).abs() < 1e-12);
    }

    #[test]
    fn nan_vectors_fail() {
        let nan = rows(&[&[f64::NAN; 3], &[f64::NAN; 3]]);
        let e = check_vectors(&nan, &rows(GOOD), 0.9).unwrap_err();
        assert!(e.starts_with("2 of 2 items"), "{e}");
        let one = rows(&[&[1.0, 0.0, 0.0], &[0.0, f64::NAN, 0.8]]);
        assert!(check_vectors(&one, &rows(GOOD), 0.9).unwrap_err().contains("item 1"));
        // And a NaN result misses its target.
        let t = targets(&measured(2.0, 4.0, &check_vectors(&nan, &rows(GOOD), 0.9), &Ok(1.0)));
        assert!(!t[1].1, "{t:?}");
    }

    #[test]
    fn short_or_missing_vectors_fail() {
        let short = rows(&[&[1.0, 0.0, 0.0], &[0.0, 0.6]]);
        assert!(check_vectors(&short, &rows(GOOD), 0.9).unwrap_err().contains("item 1: length 2, expected 3"));
        let missing = rows(&[&[1.0, 0.0, 0.0]]);
        assert!(check_vectors(&missing, &rows(GOOD), 0.9).unwrap_err().contains("1 vectors, expected 2"));
        assert!(check_vectors(&[], &rows(GOOD), 0.9).is_err());
    }

    #[test]
    fn a_wrong_vector_fails() {
        let wrong = rows(&[&[1.0, 0.0, 0.0], &[0.0, 0.8, 0.6]]);
        assert!(check_vectors(&wrong, &rows(GOOD), 0.999).unwrap_err().contains("item 1"));
        let zero = rows(&[&[1.0, 0.0, 0.0], &[0.0, 0.0, 0.0]]);
        assert!(check_vectors(&zero, &rows(GOOD), 0.9).is_err());
    }

    /// f32 and bf16 as given; int8 meeting its targets.
    fn measured<'a>(f32_ratio: f64, bf16_ratio: f64, cos_f32: &'a Result<f64, String>, cos_bf16: &'a Result<f64, String>) -> Measured<'a> {
        const INT8_OK: Result<f64, String> = Ok(0.999);
        Measured { f32_ratio, bf16_ratio, int8_ratio: 4.5, cos_f32, cos_bf16, cos_int8: &INT8_OK, int8_weights: 0.26 }
    }

    #[test]
    fn missed_targets_are_reported() {
        let all = targets(&measured(2.0, 4.0, &Ok(1.0), &Ok(0.9999)));
        assert!(all.iter().all(|(_, ok)| *ok), "{all:?}");
        let slow = targets(&measured(1.2, f64::NAN, &Ok(1.0), &Ok(0.9999)));
        assert_eq!(slow.iter().filter(|(_, ok)| !ok).count(), 2, "{slow:?}");
        let bad = targets(&measured(2.0, 4.0, &Ok(0.9), &Err("pair 2: item 3: cosine NaN".into())));
        assert!(!bad[1].1 && !bad[3].1, "{bad:?}");
        let int8 = Measured { int8_ratio: 3.2, int8_weights: f64::NAN, cos_int8: &Ok(0.99), ..measured(2.0, 4.0, &Ok(1.0), &Ok(0.9999)) };
        assert_eq!(targets(&int8).iter().filter(|(_, ok)| !ok).count(), 3, "speed, cosine and weights missed");
    }

    #[test]
    fn top_k_agreement_counts_sets_and_kept_neighbours() {
        // Four points on a line: each one's nearest neighbour is the adjacent one.
        let line = rows(&[&[1.0, 0.0, 0.0], &[0.9, 0.1, 0.0], &[0.5, 0.5, 0.0], &[0.0, 1.0, 0.0]]);
        assert_eq!(same_top_k(&line, &line, 1), TopK { same_set: 1.0, kept: 1.0, near_tie: 1.0 });
        // Swap the second and third points' places: every item now sees another nearest
        // neighbour, none of them near a tie.
        let moved = rows(&[&[1.0, 0.0, 0.0], &[0.5, 0.5, 0.0], &[0.9, 0.1, 0.0], &[0.0, 1.0, 0.0]]);
        let t = same_top_k(&moved, &line, 1);
        assert!(t.same_set < 1.0 && (t.same_set - t.kept).abs() < 1e-12 && t.near_tie == t.same_set, "{t:?}");
        // Item 0's two nearest neighbours nearly tie (cosines 0.99875 and 0.99846): a swap
        // between them misses the same set but is a near tie; item 3's does not move.
        let close = rows(&[&[1.0, 0.0, 0.0], &[1.0, 0.05, 0.0], &[1.0, 0.0, 0.0555], &[0.0, 0.0, 1.0]]);
        let swapped = rows(&[&[1.0, 0.0, 0.0], &[1.0, 0.06, 0.0], &[1.0, 0.0, 0.05], &[0.0, 0.0, 1.0]]);
        let t = same_top_k(&swapped, &close, 1);
        assert!(t.same_set < 1.0 && t.near_tie == 1.0, "{t:?}");
    }

    #[test]
    fn vectors_parse_from_both_sides() {
        // sentence-transformers (Python json) and embed-core (examples/throughput.rs), NaN included.
        assert_eq!(parse_vectors("[[0.5, -1.0], [2e-3, 3.0]]").unwrap(), vec![vec![0.5, -1.0], vec![0.002, 3.0]]);
        assert_eq!(parse_vectors("[[0.5,-1],[0.25,3]]").unwrap(), vec![vec![0.5, -1.0], vec![0.25, 3.0]]);
        let nan = parse_vectors("[[NaN,1],[0,NaN]]").unwrap();
        assert!(nan[0][0].is_nan() && nan[1][1].is_nan());
        assert_eq!(parse_vectors("[]").unwrap(), Vec::<Vec<f64>>::new());
        assert!(parse_vectors("[[0.5, x]]").is_err());
    }

    #[test]
    fn rounds_need_every_figure_and_the_thread_count() {
        let line = r#"{"impl":"embed-core","texts_per_s":10.5,"tokens_per_s":100.0,"load_s":0.2,"threads":4}"#;
        assert_eq!(parse_rounds(line).unwrap(), vec![Round { texts_per_s: 10.5, tokens_per_s: 100.0, load_s: 0.2, threads: 4, weight_bytes: 0 }]);
        let int8 = r#"{"texts_per_s":10.5,"tokens_per_s":100.0,"load_s":0.2,"threads":4,"weight_bytes":23768040}"#;
        assert_eq!(parse_rounds(int8).unwrap()[0].weight_bytes, 23_768_040);
        assert!(parse_rounds(r#"{"texts_per_s":10.5,"tokens_per_s":100.0,"load_s":0.2}"#).is_err());
        assert_eq!(parse_rounds("batch stats: none\n").unwrap(), vec![]);
    }
}
