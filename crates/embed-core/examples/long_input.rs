//! One long input and one batch of short texts through a (large) model; used by
//! `cargo xtask bench --decoder` with the Qwen3-Embedding-0.6B-shaped model.
//!
//! `long_input MODEL_DIR CORPUS DTYPE LONG_TOKENS SHORT_TEXTS VECTORS_OUT.json`
//! Loads the model on CPU in DTYPE, embeds one input of exactly LONG_TOKENS tokens (corpus lines
//! joined, truncated to that length) when LONG_TOKENS > 0, then the first SHORT_TEXTS corpus
//! lines in one call, cleans up, and prints one JSON line: times, peak resident memory during
//! each step (VmHWM, reset before it), and the memory figures after cleanup beside the ones
//! before loading. `EMBED_THREADS=N` sets the worker's intra-op threads.

use std::time::Instant;

use embed_core::memory::{live_models, live_weight_bytes, process_resident_bytes, trim_cpu_heap, MemorySnapshot};
use embed_core::{DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelOptions, ModelSpec};

/// Peak resident set size since the last [`reset_peak`] (`VmHWM`), in bytes.
fn peak_resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets `VmHWM` to the current RSS (Linux: `5` in `/proc/self/clear_refs`). Returns false
/// where the kernel does not allow it; the peaks are then process-lifetime peaks.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, corpus, dtype, long_tokens, short, vectors_out] = args.as_slice() else {
        return Err("usage: long_input MODEL_DIR CORPUS DTYPE LONG_TOKENS SHORT_TEXTS VECTORS_OUT.json".into());
    };
    let dtype: DType = dtype.parse()?;
    let long_tokens: usize = long_tokens.parse()?;
    let short: usize = short.parse()?;
    let lines: Vec<String> = std::fs::read_to_string(corpus)?.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect();
    let threads = std::env::var("EMBED_THREADS").ok().map(|s| s.parse::<usize>()).transpose()?;

    trim_cpu_heap();
    let before = MemorySnapshot::now();
    let peak_resettable = reset_peak();
    let t = Instant::now();
    let mut options = ModelOptions::default().with_dtype(dtype).with_tuning(embed_core::Tuning::from_env());
    options.threads = threads;
    options.max_seq_length = (long_tokens > 0).then_some(long_tokens);
    let svc = DenseEmbeddingService::from_spec(ModelSpec::new(model.as_str()).with_options(options)).await?;
    let load_s = t.elapsed().as_secs_f64();
    let info = svc.info().ok_or("no model info")?;
    let loaded_resident = process_resident_bytes();
    let load_peak = peak_resident();

    let mut long = serde_json::Value::Null;
    if long_tokens > 0 {
        // Enough corpus lines for the length; the service truncates to exactly `long_tokens`.
        let mut text = String::new();
        for line in lines.iter().cycle() {
            text.push_str(line);
            text.push(' ');
            if text.len() > long_tokens * 8 {
                break;
            }
        }
        reset_peak();
        let t = Instant::now();
        let out = svc.embed_texts(&[text], &EmbedOptions::default()).await?;
        let s = t.elapsed().as_secs_f64();
        if out.token_counts[0] != long_tokens {
            return Err(format!("the long input has {} tokens, expected {long_tokens}", out.token_counts[0]).into());
        }
        long = serde_json::json!({"tokens": out.token_counts[0], "seconds": s, "tokens_per_s": long_tokens as f64 / s, "peak_resident": peak_resident()});
    }

    let texts = &lines[..short.min(lines.len())];
    svc.embed_texts(&texts[..texts.len().min(4)], &EmbedOptions::default()).await?;
    reset_peak();
    let t = Instant::now();
    let out = svc.embed_texts(texts, &EmbedOptions::default()).await?;
    let short_s = t.elapsed().as_secs_f64();
    let short_peak = peak_resident();
    std::fs::write(vectors_out, serde_json::to_string(&out.vectors)?)?;

    let report = svc.cleanup().await?;
    drop(svc);
    trim_cpu_heap();
    let after = MemorySnapshot::now();
    println!(
        "{}",
        serde_json::json!({
            "dtype": info.dtype.to_string(), "threads": info.threads, "weight_bytes": info.weight_bytes, "load_s": load_s,
            "load_peak_resident": load_peak, "loaded_resident": loaded_resident, "peak_resettable": peak_resettable,
            "long": long,
            "short": {"texts": texts.len(), "tokens": out.total_tokens(), "seconds": short_s, "texts_per_s": texts.len() as f64 / short_s, "peak_resident": short_peak},
            "released_weight_bytes": report.model_weight_bytes,
            "before": before, "after": after, "live_models_after": live_models(), "live_weight_bytes_after": live_weight_bytes(),
        })
    );
    Ok(())
}
