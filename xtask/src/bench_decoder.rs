//! `cargo xtask bench --decoder`: a Qwen3-Embedding-0.6B-shaped model (random weights, written
//! once by `bench/decoder_shape.py` into the cache) on this machine's CPU.
//!
//! Steps, each in a child process of its own so that peak memory is the step's own:
//! 1. embed-core bf16 (`examples/long_input.rs`): load, one input of `--long-tokens` tokens
//!    (4096), 64 short corpus texts in one call, cleanup; times, peak RSS of each step, and the
//!    memory figures after cleanup beside those before loading;
//! 2. embed-core f32, the same 64 texts (the reference the bf16 vectors are compared with);
//! 3. the same model as the Hub ships larger ones, in [`SHARDS`] safetensors shards with a
//!    `model.safetensors.index.json` (`bench/decoder_shape.py shard`): bf16 load (peak RSS
//!    against the weight bytes) and the same 64 texts;
//! 4. sentence-transformers f32, the same 64 texts (time, and parity of the f32 vectors);
//! 5. the leak check's core and pool layers churning this model (`leak-check --model-dir`), and
//!    the core layer churning the sharded copy.
//!
//! Verdicts (non-zero exit when one fails): f32 vectors match sentence-transformers (cosine
//! at least 0.99999), bf16 within [`BF16_MIN_COSINE`] of f32, the long input's working memory
//! under [`LONG_INPUT_EXTRA_LIMIT`] above the loaded model, everything released after cleanup,
//! the leak check clean, the sharded copy's vectors those of the single file, and the load's peak
//! RSS (single file and shards) under [`LOAD_PEAK_LIMIT`] times the weight bytes above the
//! resident memory before loading. Writes `bench-results/decoder.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::{check_vectors, cpu_model, flag, read_vectors, run_capture};
use crate::{leak_check, setup};

/// Short texts embedded in one call: the "batch of 64 short texts".
const SHORT_TEXTS: usize = 64;
/// bf16 against f32 on this 28-layer random model (errors compound over depth; measured
/// 0.99 and better on the AMD EPYC, see the closing notes).
const BF16_MIN_COSINE: f64 = 0.98;
const F32_MIN_COSINE: f64 = 0.99999;
/// Memory the long input may take above the loaded model (activations of one 4096-token pass
/// and the allocator's slack). Attention that materialised its scores would need
/// 16 heads x 4096^2 x 4 bytes = 1 GiB per layer for the scores alone, so this also proves the
/// memory-efficient attention path ran.
const LONG_INPUT_EXTRA_LIMIT: f64 = 768.0 * 1024.0 * 1024.0;
/// What may stay resident after cleanup (anonymous memory: allocator arenas, thread stacks).
const RESIDENT_AFTER_LIMIT: f64 = 64.0 * 1024.0 * 1024.0;

/// Shards of the sharded copy (the Hub's Qwen3-Embedding-4B has 2, -8B 4).
const SHARDS: usize = 3;
/// Peak RSS while loading, above the resident memory before, as a multiple of the loaded
/// weights' bytes, plus [`LOAD_PEAK_SLACK`] for libtorch's and the tokenizer's own state. A
/// loader that read the whole checkpoint before converting it would need 2x (bf16 to bf16) or
/// 1.5x (bf16 to f32) and more.
const LOAD_PEAK_LIMIT: f64 = 1.2;
const LOAD_PEAK_SLACK: f64 = 192.0 * 1024.0 * 1024.0;

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

/// The model directory, written on first use (~1.2 GB of bf16 weights, ~15 s).
fn model_dir(python: &Path, root: &Path) -> Result<PathBuf> {
    let dir = setup::cache_dir()?.join("models/qwen3-0.6b-shaped");
    if !dir.join("model.safetensors").exists() {
        println!("bench: writing the Qwen3-Embedding-0.6B-shaped random model to {}", dir.display());
        std::fs::create_dir_all(dir.parent().expect("has a parent"))?;
        let status = Command::new(python)
            .arg(root.join("bench/decoder_shape.py"))
            .arg("make")
            .arg(root.join("testdata/fixtures/qwen3"))
            .arg(&dir)
            .status()?;
        if !status.success() {
            bail!("bench/decoder_shape.py make failed");
        }
    }
    Ok(dir)
}

/// The sharded copy of `dir`, written on first use.
fn sharded_dir(python: &Path, root: &Path, dir: &Path) -> Result<PathBuf> {
    let out = dir.with_file_name(format!("{}-sharded", dir.file_name().expect("a name").to_string_lossy()));
    if !out.join("model.safetensors.index.json").exists() {
        println!("bench: writing the sharded copy ({SHARDS} shards) to {}", out.display());
        let status = Command::new(python).arg(root.join("bench/decoder_shape.py")).arg("shard").arg(dir).arg(&out).arg(SHARDS.to_string()).status()?;
        if !status.success() {
            bail!("bench/decoder_shape.py shard failed");
        }
    }
    Ok(out)
}

fn num(v: &Value, path: &[&str]) -> Result<f64> {
    path.iter().fold(v, |cur, p| &cur[*p]).as_f64().with_context(|| format!("{} missing in {v}", path.join(".")))
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let threads: usize = flag(args, "--threads").unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let long_tokens: usize = flag(args, "--long-tokens").unwrap_or(4096);
    let env = setup::run(&setup::Options { bench: true, models: Vec::new() })?;
    let root = &env.root;
    let dir = model_dir(&env.python, root)?;
    let corpus = root.join("testdata/corpus.txt");
    let out_dir = root.join("bench-results");
    std::fs::create_dir_all(&out_dir)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("bench: building the Rust side (release)");
    if !Command::new(&cargo).current_dir(root).args(["build", "--release", "-q", "-p", "embed-core", "--example", "long_input"]).status()?.success() {
        bail!("building the long_input example failed");
    }
    let bin = root.join("target/release/examples/long_input");
    let sharded = sharded_dir(&env.python, root, &dir)?;
    let side_of = |dir: &Path, tag: &str, dtype: &str, long: usize| -> Result<(Value, PathBuf)> {
        let vectors = out_dir.join(format!("decoder-vectors-{dtype}{tag}.json"));
        println!("bench: embed-core {dtype}{tag} ({} the {long}-token input)", if long > 0 { "with" } else { "without" });
        let mut cmd = Command::new(&bin);
        cmd.arg(dir).arg(&corpus).arg(dtype).arg(long.to_string()).arg(SHORT_TEXTS.to_string()).arg(&vectors).env("EMBED_THREADS", threads.to_string());
        let out = run_capture(&mut cmd)?;
        let line = out.lines().last().context("long_input printed nothing")?;
        Ok((serde_json::from_str(line).with_context(|| format!("long_input output {line:?}"))?, vectors))
    };
    let side = |dtype: &str, long: usize| side_of(&dir, "", dtype, long);
    let (bf16, bf16_vectors) = side("bf16", long_tokens)?;
    let (f32, f32_vectors) = side("f32", 0)?;
    let (bf16_sharded, bf16_sharded_vectors) = side_of(&sharded, "-sharded", "bf16", 0)?;

    println!("bench: sentence-transformers f32");
    let texts: Vec<String> = std::fs::read_to_string(&corpus)?.lines().filter(|l| !l.trim().is_empty()).take(SHORT_TEXTS).map(String::from).collect();
    let texts_path = out_dir.join("decoder-texts.txt");
    std::fs::write(&texts_path, texts.join("\n") + "\n")?;
    let st_vectors = out_dir.join("decoder-vectors-st.json");
    let mut py = Command::new(&env.python);
    py.arg(root.join("bench/decoder_shape.py")).arg("st").arg(&dir).arg(&texts_path).arg(threads.to_string()).arg(&st_vectors);
    py.env("HF_HUB_OFFLINE", "1").env("TOKENIZERS_PARALLELISM", "false");
    let st_line = run_capture(&mut py)?;
    let st: Value = serde_json::from_str(st_line.lines().last().context("decoder_shape.py st printed nothing")?)?;

    let f32_vs_st = check_vectors(&read_vectors(&f32_vectors)?, &read_vectors(&st_vectors)?, F32_MIN_COSINE);
    let bf16_vs_f32 = check_vectors(&read_vectors(&bf16_vectors)?, &read_vectors(&f32_vectors)?, BF16_MIN_COSINE);
    let sharded_vs_single = check_vectors(&read_vectors(&bf16_sharded_vectors)?, &read_vectors(&bf16_vectors)?, F32_MIN_COSINE);

    let cpu = cpu_model();
    let short_s = |v: &Value| num(v, &["short", "seconds"]);
    let st_s = num(&st, &["seconds"])?;
    println!("\nQwen3-Embedding-0.6B-shaped (random weights, {} MB in bf16), CPU {cpu}, {threads} threads", (num(&bf16, &["weight_bytes"])? / 1e6).round());
    let loaded = num(&bf16, &["loaded_resident"])?;
    // Peak RSS while loading above what the process held before, against the weight bytes.
    let load_rise = |v: &Value| -> Result<f64> { Ok(num(v, &["load_peak_resident"])? - num(v, &["before", "resident"])?) };
    println!("{:<36} {:>9} {:>10} {:>14} {:>14} {:>12} {:>8}", "load", "seconds", "", "peak RSS MiB", "rise MiB", "weights MiB", "rise/w");
    for (name, v) in [("load bf16 (single file)", &bf16), (&*format!("load bf16 ({SHARDS} shards)"), &bf16_sharded), ("load f32 (from bf16 file)", &f32)] {
        let w = num(v, &["weight_bytes"])?;
        println!(
            "{:<36} {:>9.2} {:>10} {:>14.0} {:>14.0} {:>12.0} {:>8.2}",
            name,
            num(v, &["load_s"])?,
            "",
            mib(num(v, &["load_peak_resident"])?),
            mib(load_rise(v)?),
            mib(w),
            load_rise(v)? / w
        );
    }
    println!("{:<36} {:>9} {:>10} {:>14} {:>14}", "step", "seconds", "tokens/s", "peak RSS MiB", "vs loaded MiB");
    let mut long_extra = f64::NAN;
    if long_tokens > 0 {
        let peak = num(&bf16, &["long", "peak_resident"])?;
        long_extra = peak - loaded;
        println!(
            "{:<36} {:>9.2} {:>10.0} {:>14.0} {:>+14.0}",
            format!("one {long_tokens}-token input bf16"),
            num(&bf16, &["long", "seconds"])?,
            num(&bf16, &["long", "tokens_per_s"])?,
            mib(peak),
            mib(long_extra)
        );
    }
    for (name, v) in [("bf16", &bf16), ("f32", &f32)] {
        let peak = num(v, &["short", "peak_resident"])?;
        let base = num(v, &["loaded_resident"])?;
        println!(
            "{:<36} {:>9.2} {:>10.0} {:>14.0} {:>+14.0}",
            format!("{SHORT_TEXTS} short texts embed-core {name}"),
            short_s(v)?,
            num(v, &["short", "tokens"])? / short_s(v)?,
            mib(peak),
            mib(peak - base)
        );
    }
    println!("{:<36} {:>9.2} {:>10} {:>14} {:>14}", format!("{SHORT_TEXTS} short texts sentence-transformers"), st_s, "-", "-", "-");
    println!("speed on the short texts vs sentence-transformers f32: embed-core f32 {:.2}x, bf16 {:.2}x", st_s / short_s(&f32)?, st_s / short_s(&bf16)?);

    let mut verdicts: Vec<(String, bool)> = Vec::new();
    let cos = |name: &str, min: f64, r: &std::result::Result<f64, String>| match r {
        Ok(c) => (format!("{name} cosine >= {min} (worst {c:.6})"), true),
        Err(e) => (format!("{name} cosine >= {min}: {e}"), false),
    };
    verdicts.push(cos("embed-core f32 vs sentence-transformers", F32_MIN_COSINE, &f32_vs_st));
    verdicts.push(cos("embed-core bf16 vs f32", BF16_MIN_COSINE, &bf16_vs_f32));
    verdicts.push(cos(&format!("embed-core bf16 from {SHARDS} shards vs the single file"), F32_MIN_COSINE, &sharded_vs_single));
    for (name, v) in [("bf16 single file", &bf16), ("bf16 shards", &bf16_sharded), ("f32", &f32)] {
        let (rise, w) = (load_rise(v)?, num(v, &["weight_bytes"])?);
        let limit = LOAD_PEAK_LIMIT * w + LOAD_PEAK_SLACK;
        verdicts.push((
            format!("load {name}: peak RSS rise {:.0} MiB <= {LOAD_PEAK_LIMIT} x {:.0} MiB of weights + {:.0} MiB", mib(rise), mib(w), mib(LOAD_PEAK_SLACK)),
            rise <= limit,
        ));
    }
    if long_tokens > 0 {
        verdicts.push((
            format!("the {long_tokens}-token input takes < {:.0} MiB above the loaded model ({:.0} MiB)", mib(LONG_INPUT_EXTRA_LIMIT), mib(long_extra)),
            long_extra < LONG_INPUT_EXTRA_LIMIT,
        ));
    }
    for (name, v) in [("bf16", &bf16), ("f32", &f32), ("bf16 shards", &bf16_sharded)] {
        let released = num(v, &["released_weight_bytes"])? == num(v, &["weight_bytes"])?
            && num(v, &["live_models_after"])? == 0.0
            && num(v, &["live_weight_bytes_after"])? == 0.0;
        verdicts.push((format!("{name}: every weight byte released, no model live after cleanup"), released));
        let grown = num(v, &["after", "resident_anon"])? - num(v, &["before", "resident_anon"])?;
        verdicts.push((format!("{name}: anonymous RSS after cleanup within {:.0} MiB of before loading ({:+.1} MiB)", mib(RESIDENT_AFTER_LIMIT), mib(grown)), grown <= RESIDENT_AFTER_LIMIT));
    }

    println!("\nbench: leak check with this model (core and pool layers, 3 cycles)");
    let leak_json = out_dir.join("decoder-leak.json");
    let clean = leak_check::run(&leak_check::Options {
        device: "cpu".into(),
        cycles: 3,
        json: Some(leak_json.clone()),
        layers: vec!["core".into(), "pool".into()],
        plant_leak: false,
        model_dir: Some(dir.clone()),
    })?;
    verdicts.push(("leak check (core, pool) with the 0.6B-shaped model clean".into(), clean));
    println!("\nbench: leak check with the sharded copy (core layer, 2 cycles)");
    let sharded_leak_json = out_dir.join("decoder-sharded-leak.json");
    let clean = leak_check::run(&leak_check::Options {
        device: "cpu".into(),
        cycles: 2,
        json: Some(sharded_leak_json),
        layers: vec!["core".into()],
        plant_leak: false,
        model_dir: Some(sharded.clone()),
    })?;
    verdicts.push((format!("leak check (core) with the {SHARDS}-shard copy clean"), clean));

    println!();
    for (t, ok) in &verdicts {
        println!("target {t}: {}", if *ok { "met" } else { "MISSED" });
    }
    let report = serde_json::json!({
        "model": "qwen3-0.6b-shaped", "cpu": cpu, "threads": threads, "long_tokens": long_tokens, "short_texts": SHORT_TEXTS,
        "embed_core_bf16": bf16, "embed_core_f32": f32, "embed_core_bf16_sharded": bf16_sharded, "shards": SHARDS, "sentence_transformers_f32": st,
        "targets": verdicts.iter().map(|(t, ok)| serde_json::json!({"target": t, "met": ok})).collect::<Vec<_>>(),
    });
    let path = out_dir.join("decoder.json");
    std::fs::write(&path, format!("{report:#}\n"))?;
    println!("\nwrote {} and {}", path.display(), leak_json.display());
    let missed = verdicts.iter().filter(|(_, ok)| !ok).count();
    if missed > 0 {
        bail!("bench --decoder: {missed} target(s) missed");
    }
    Ok(())
}
