//! Where the CPU forward pass spends its time, f32 beside bf16 (plain, and prepacked for
//! oneDNN as loaded by default) and int8, stage by stage (see
//! `embed_core::profile`): each linear layer together, attention, norms, activations,
//! residual adds, the padding-free index ops, upload, head and output copy.
//!
//! `EMBED_PROFILE_STAGES=1 cargo run --release -p embed-core --example stage_profile -- MODEL_DIR CORPUS [ROUNDS] [THREADS]`
//!
//! Each dtype: load, one warm-up pass over the corpus, then ROUNDS timed passes (default 3);
//! the dtypes alternate round by round so that a noisy machine affects both alike. Prints a
//! table (milliseconds per pass over the corpus) and one JSON line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use embed_core::{DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelOptions, ModelSpec};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The example offers the library's switches as the server does, by their variables.
    let tuning = embed_core::Tuning::from_env();
    if !tuning.profile_stages {
        return Err("set EMBED_PROFILE_STAGES=1 (it turns on each model's tuning.profile_stages)".into());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().ok_or("usage: stage_profile MODEL_DIR CORPUS [ROUNDS] [THREADS]")?;
    let corpus = args.get(1).ok_or("missing CORPUS")?;
    let rounds: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let threads: Option<usize> = args.get(3).map(|s| s.parse()).transpose()?;
    let texts: Vec<String> = std::fs::read_to_string(corpus)?.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect();

    let dtypes = [(DType::F32, None), (DType::Bf16, Some(false)), (DType::Bf16, None), (DType::Int8, None)];
    let mut services = Vec::new();
    for (dtype, cpu_prepack) in dtypes {
        let mut options = ModelOptions::default().with_dtype(dtype).with_tuning(tuning);
        options.threads = threads;
        options.cpu_prepack = cpu_prepack;
        let spec = ModelSpec::new(model.as_str()).with_options(options);
        let svc = DenseEmbeddingService::from_spec(spec).await?;
        svc.embed_texts(&texts, &EmbedOptions::default()).await?;
        services.push(svc);
    }
    let _ = embed_core::profile::take();
    let mut stages: Vec<BTreeMap<&'static str, Duration>> = vec![BTreeMap::new(); dtypes.len()];
    let mut wall = vec![Duration::ZERO; dtypes.len()];
    for _ in 0..rounds {
        for (i, svc) in services.iter().enumerate() {
            let t = Instant::now();
            svc.embed_texts(&texts, &EmbedOptions::default()).await?;
            wall[i] += t.elapsed();
            for s in embed_core::profile::take() {
                *stages[i].entry(s.name).or_default() += s.total;
            }
        }
    }
    for svc in services {
        svc.cleanup().await?;
    }
    let per_pass = |d: Duration| d.as_secs_f64() * 1e3 / rounds as f64;
    let names: Vec<&str> = {
        let mut n: Vec<(&str, Duration)> = stages[0].iter().map(|(k, v)| (*k, *v)).collect();
        n.sort_by(|a, b| b.1.cmp(&a.1));
        n.into_iter().map(|(k, _)| k).collect()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    println!("{} texts, {rounds} rounds, threads {}, {cpu}", texts.len(), threads.map_or("default".into(), |t| t.to_string()));
    println!(
        "{:<12} {:>9} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "stage", "f32 ms", "bf16 plain", "bf16 packed", "int8", "f32/plain", "f32/packed", "f32/int8", "f32 %", "bf16 %"
    );
    let ms = |i: usize, name: &str| per_pass(stages[i].get(name).copied().unwrap_or_default());
    let walls: Vec<f64> = wall.iter().map(|w| per_pass(*w)).collect();
    let mut rows = Vec::new();
    // A stage a variant does not have (the GELU fused into the matmul) shows "-".
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { "-".into() };
    for name in &names {
        let (a, b, c, d) = (ms(0, name), ms(1, name), ms(2, name), ms(3, name));
        println!(
            "{name:<12} {a:>9.1} {b:>12.1} {c:>12.1} {d:>9.1} {:>9} {:>9} {:>9} {:>6.1}% {:>6.1}%",
            ratio(a, b),
            ratio(a, c),
            ratio(a, d),
            100.0 * a / walls[0],
            100.0 * c / walls[2]
        );
        rows.push(serde_json::json!({"stage": name, "f32_ms": a, "bf16_plain_ms": b, "bf16_prepacked_ms": c, "int8_ms": d}));
    }
    println!(
        "{:<12} {:>9.1} {:>12.1} {:>12.1} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
        "wall",
        walls[0],
        walls[1],
        walls[2],
        walls[3],
        walls[0] / walls[1],
        walls[0] / walls[2],
        walls[0] / walls[3]
    );
    let json = serde_json::json!({"cpu": cpu, "texts": texts.len(), "rounds": rounds,
        "wall_ms": {"f32": walls[0], "bf16_plain": walls[1], "bf16_prepacked": walls[2], "int8": walls[3]}, "stages": rows});
    println!("{json}");
    Ok(())
}
