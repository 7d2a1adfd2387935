//! `cargo xtask bench --rerank`: reranking with a Qwen3-Reranker-0.6B-shaped model (random
//! weights, written once by `bench/reranker_shape.py` into the cache) on this machine's CPU, in
//! bf16, embed-core beside transformers' reference (the model card's scoring code) in the same run.
//!
//! Steps, each in a child process of its own so that each peak RSS is that side's own:
//! 1. the pairs: [`GROUPS`] queries with [`PER_GROUP`] documents each, every prompt about
//!    `--tokens` (300) tokens (`bench/reranker_shape.py pairs`, over `testdata/corpus.txt`);
//! 2. embed-core bf16 (`examples/rerank_bench.rs`, release build): one `rerank` call per query;
//! 3. transformers bf16 (`bench/reranker_shape.py ref`): the model card's code, one batch per
//!    query, left-padded, with position ids from the attention mask (each pair scored as if alone,
//!    as embed and vLLM score it; the card's own batched call shifts the positions by the padding).
//!
//! Cost: on an Intel Xeon with AMX (2 cores) the whole run takes about 4 minutes (embed-core
//! 41 s, the reference 63 s, plus writing the model once). transformers in bf16 is slow on a
//! CPU without native bf16 matmuls (AMD EPYC, no AVX-512: about 5 tokens per CPU-second in a
//! smoke run, about an hour for the ~31 000 tokens); `--groups 1` runs 10 pairs.
//!
//! Verdicts (non-zero exit when one fails): both sides saw the same number of tokens; the worst
//! absolute score difference is at most [`SCORE_TOLERANCE`]; within each query the two rankings
//! agree, except for pairs the reference scores closer than [`TIE`] (a near tie may swap under
//! bf16 rounding); every weight byte released after cleanup. Writes `bench-results/rerank.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::{cpu_model, flag, run_capture};
use crate::setup;

/// Queries (`--groups`), and documents per query: the 100 pairs.
const GROUPS: usize = 10;
const PER_GROUP: usize = 10;
/// bf16 on both sides, through 28 layers, with different kernels and summation orders: the
/// scores are probabilities, so this bounds what the rounding may move one. The first full run
/// (Intel Xeon with AMX, 100 pairs) gave a worst difference of 1.65e-3; the random model's
/// scores sit near 0.5.
const SCORE_TOLERANCE: f64 = 0.02;
/// Reference scores closer than this are a near tie, which bf16 rounding may order either way.
const TIE: f64 = 2.0 * SCORE_TOLERANCE;

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

fn num(v: &Value, path: &[&str]) -> Result<f64> {
    path.iter().fold(v, |cur, p| &cur[*p]).as_f64().with_context(|| format!("{} missing in {v}", path.join(".")))
}

/// The model directory, written on first use (~1.2 GB of bf16 weights).
fn model_dir(python: &Path, root: &Path) -> Result<PathBuf> {
    let dir = setup::cache_dir()?.join("models/qwen3-reranker-0.6b-shaped");
    if !dir.join("model.safetensors").exists() {
        println!("bench: writing the Qwen3-Reranker-0.6B-shaped random model to {}", dir.display());
        std::fs::create_dir_all(dir.parent().expect("has a parent"))?;
        let status = Command::new(python)
            .arg(root.join("bench/reranker_shape.py"))
            .arg("make")
            .arg(root.join("testdata/fixtures/qwen3-reranker"))
            .arg(&dir)
            .status()?;
        if !status.success() {
            bail!("bench/reranker_shape.py make failed");
        }
    }
    Ok(dir)
}

/// Scores per group, as both sides write them.
fn read_scores(path: &Path) -> Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// How two sets of scores compare: the worst absolute difference (NaN-propagating), and the
/// pairs of documents of one query that the two order differently, split into near ties (the
/// reference's scores closer than `tie`) and real disagreements.
#[derive(Debug, PartialEq)]
pub(crate) struct Agreement {
    pub(crate) compared: usize,
    pub(crate) worst: f64,
    pub(crate) swapped_ties: usize,
    pub(crate) swapped: usize,
    /// Pairs of documents of one query whose reference scores are at least `tie` apart: the
    /// ones the ranking verdict can catch a swap in.
    pub(crate) decisive: usize,
}

pub(crate) fn compare(ours: &[Vec<f64>], reference: &[Vec<f64>], tie: f64) -> std::result::Result<Agreement, String> {
    if ours.len() != reference.len() {
        return Err(format!("{} groups against the reference's {}", ours.len(), reference.len()));
    }
    let mut a = Agreement { compared: 0, worst: 0.0, swapped_ties: 0, swapped: 0, decisive: 0 };
    for (g, (o, r)) in ours.iter().zip(reference).enumerate() {
        if o.len() != r.len() {
            return Err(format!("group {g}: {} scores against the reference's {}", o.len(), r.len()));
        }
        for (x, y) in o.iter().zip(r) {
            let d = (x - y).abs();
            a.worst = if d.is_nan() || d > a.worst { d } else { a.worst };
            a.compared += 1;
        }
        for i in 0..r.len() {
            for j in i + 1..r.len() {
                let (ro, oo) = (r[i].partial_cmp(&r[j]), o[i].partial_cmp(&o[j]));
                if (r[i] - r[j]).abs() >= tie {
                    a.decisive += 1;
                }
                if ro != oo {
                    if (r[i] - r[j]).abs() < tie {
                        a.swapped_ties += 1;
                    } else {
                        a.swapped += 1;
                    }
                }
            }
        }
    }
    if a.compared == 0 {
        return Err("no scores compared".into());
    }
    Ok(a)
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let threads: usize = flag(args, "--threads").unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let tokens: usize = flag(args, "--tokens").unwrap_or(300);
    let groups: usize = flag(args, "--groups").unwrap_or(GROUPS);
    let env = setup::run(&setup::Options { bench: true, models: Vec::new() })?;
    let root = &env.root;
    let dir = model_dir(&env.python, root)?;
    let out_dir = root.join("bench-results");
    std::fs::create_dir_all(&out_dir)?;
    let script = root.join("bench/reranker_shape.py");

    let pairs = out_dir.join("rerank-pairs.json");
    let mut py = Command::new(&env.python);
    py.arg(&script).arg("pairs").arg(&dir).arg(root.join("testdata/corpus.txt"));
    py.arg(groups.to_string()).arg(PER_GROUP.to_string()).arg(tokens.to_string()).arg(&pairs);
    print!("bench: {}", run_capture(&mut py)?);

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("bench: building the Rust side (release)");
    if !Command::new(&cargo).current_dir(root).args(["build", "--release", "-q", "-p", "embed-core", "--example", "rerank_bench"]).status()?.success() {
        bail!("building the rerank_bench example failed");
    }
    println!("bench: embed-core bf16");
    let ours_scores = out_dir.join("rerank-scores-embed.json");
    let mut cmd = Command::new(root.join("target/release/examples/rerank_bench"));
    cmd.arg(&dir).arg(&pairs).arg("bf16").arg(&ours_scores).env("EMBED_THREADS", threads.to_string());
    let out = run_capture(&mut cmd)?;
    let ours: Value = serde_json::from_str(out.lines().last().context("rerank_bench printed nothing")?)?;

    println!("bench: transformers bf16 (the model card's scoring)");
    let ref_scores = out_dir.join("rerank-scores-transformers.json");
    let mut py = Command::new(&env.python);
    py.arg(&script).arg("ref").arg(&dir).arg(&pairs).arg(threads.to_string()).arg(&ref_scores);
    py.env("HF_HUB_OFFLINE", "1").env("TOKENIZERS_PARALLELISM", "false");
    let out = run_capture(&mut py)?;
    let reference: Value = serde_json::from_str(out.lines().last().context("reranker_shape.py ref printed nothing")?)?;

    let agreement = compare(&read_scores(&ours_scores)?, &read_scores(&ref_scores)?, TIE);
    let cpu = cpu_model();
    println!(
        "\nQwen3-Reranker-0.6B-shaped (random weights, {} MB in bf16), CPU {cpu}, {threads} threads, {} pairs ({} queries), {} tokens",
        (num(&ours, &["weight_bytes"])? / 1e6).round(),
        num(&ours, &["pairs"])?,
        num(&ours, &["groups"])?,
        num(&ours, &["tokens"])?
    );
    println!("{:<28} {:>9} {:>9} {:>10} {:>14} {:>16}", "side (bf16)", "seconds", "pairs/s", "tokens/s", "peak RSS MiB", "scoring peak MiB");
    for (name, v) in [("embed-core", &ours), ("transformers (model card)", &reference)] {
        println!(
            "{:<28} {:>9.1} {:>9.3} {:>10.0} {:>14.0} {:>16.0}",
            name,
            num(v, &["seconds"])?,
            num(v, &["pairs_per_s"])?,
            num(v, &["tokens_per_s"])?,
            mib(num(v, &["peak_resident"])?),
            mib(num(v, &["scoring_peak_resident"])?)
        );
    }
    let speedup = num(&reference, &["seconds"])? / num(&ours, &["seconds"])?;
    println!("embed-core vs transformers: {speedup:.2}x");

    let mut verdicts: Vec<(String, bool)> = Vec::new();
    let (t_ours, t_ref) = (num(&ours, &["tokens"])?, num(&reference, &["tokens"])?);
    verdicts.push((format!("both sides score the same tokens ({t_ours} and {t_ref})"), t_ours == t_ref));
    match &agreement {
        Ok(a) => {
            println!(
                "scores: {} compared, worst abs difference {:.2e}; rankings: {} pairs of documents swapped ({} of them near ties under {TIE}); {} pairs at least {TIE} apart in the reference",
                a.compared,
                a.worst,
                a.swapped + a.swapped_ties,
                a.swapped_ties,
                a.decisive
            );
            verdicts.push((format!("worst abs score difference <= {SCORE_TOLERANCE} ({:.2e})", a.worst), a.worst <= SCORE_TOLERANCE));
            verdicts.push((format!("the same ranking within each query, near ties aside ({} swapped)", a.swapped), a.swapped == 0));
        }
        Err(e) => verdicts.push((format!("scores comparable: {e}"), false)),
    }
    let released = num(&ours, &["released_weight_bytes"])? == num(&ours, &["weight_bytes"])?
        && num(&ours, &["live_models_after"])? == 0.0
        && num(&ours, &["live_weight_bytes_after"])? == 0.0;
    verdicts.push(("embed-core: every weight byte released, no model live after cleanup".into(), released));

    println!();
    for (t, ok) in &verdicts {
        println!("target {t}: {}", if *ok { "met" } else { "MISSED" });
    }
    let report = serde_json::json!({
        "model": "qwen3-reranker-0.6b-shaped", "cpu": cpu, "threads": threads, "groups": groups, "per_group": PER_GROUP,
        "prompt_tokens": tokens, "embed_core_bf16": ours, "transformers_bf16": reference, "speedup": speedup,
        "agreement": agreement.as_ref().map(|a| serde_json::json!({"compared": a.compared, "worst_abs_diff": a.worst, "swapped": a.swapped, "swapped_near_ties": a.swapped_ties, "decisive_pairs": a.decisive})).unwrap_or(Value::Null),
        "targets": verdicts.iter().map(|(t, ok)| serde_json::json!({"target": t, "met": ok})).collect::<Vec<_>>(),
    });
    let path = out_dir.join("rerank.json");
    std::fs::write(&path, format!("{report:#}\n"))?;
    println!("\nwrote {}", path.display());
    let missed = verdicts.iter().filter(|(_, ok)| !ok).count();
    if missed > 0 {
        bail!("bench --rerank: {missed} target(s) missed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_finds_the_worst_difference_and_the_swaps() {
        let r = vec![vec![0.9, 0.5, 0.49], vec![0.1, 0.8]];
        let same = compare(&r, &r, 0.04).unwrap();
        // Pairs within a query: 3 + 1, of which (0.5, 0.49) is under the tie.
        assert_eq!(same, Agreement { compared: 5, worst: 0.0, swapped_ties: 0, swapped: 0, decisive: 3 });
        // 0.5 and 0.49 swap: a near tie; 0.1 and 0.8 swap: a real disagreement.
        let o = vec![vec![0.9, 0.48, 0.5], vec![0.85, 0.8]];
        let a = compare(&o, &r, 0.04).unwrap();
        assert_eq!((a.compared, a.swapped_ties, a.swapped), (5, 1, 1));
        assert!((a.worst - 0.75).abs() < 1e-12, "{}", a.worst);
        let nan = compare(&[vec![f64::NAN, 0.5, 0.49], vec![0.1, 0.8]], &r, 0.04).unwrap();
        assert!(nan.worst.is_nan());
        assert!(compare(&r[..1], &r, 0.04).is_err());
        assert!(compare(&[vec![0.9], vec![0.1, 0.8]], &r, 0.04).is_err());
        assert!(compare(&[], &[], 0.04).is_err());
    }
}
