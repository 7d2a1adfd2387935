//! Reranking through a (large) LLM reranker; used by `cargo xtask bench --rerank` with the
//! Qwen3-Reranker-0.6B-shaped model.
//!
//! `rerank_bench MODEL_DIR PAIRS.json DTYPE SCORES_OUT.json`
//! Loads MODEL_DIR on CPU in DTYPE as a Qwen3-Reranker (`LlmReranker::qwen3`: the model card's
//! prompt, the default instruction, the yes/no logits of the last position), reranks one
//! document of the first group to warm up, then every group of PAIRS.json (`{"groups": [{"query":
//! …, "documents": […]}, …]}`) with one `rerank` call each, in order; cleans up and prints one
//! JSON line: times, tokens, peak resident memory while scoring (VmHWM, reset after the load) and
//! over the whole process, and the memory figures after cleanup. Writes the scores (sigmoid of
//! yes − no), group by group, to SCORES_OUT.json. `EMBED_THREADS=N` sets the worker's intra-op
//! threads.

use std::time::Instant;

use embed_core::memory::{live_models, live_weight_bytes, process_resident_bytes, trim_cpu_heap, MemorySnapshot};
use embed_core::{DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, LlmReranker, ModelOptions, ModelSpec, RetrievalTasks};

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

#[derive(serde::Deserialize)]
struct Group {
    query: String,
    documents: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Pairs {
    groups: Vec<Group>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, pairs, dtype, scores_out] = args.as_slice() else {
        return Err("usage: rerank_bench MODEL_DIR PAIRS.json DTYPE SCORES_OUT.json".into());
    };
    let dtype: DType = dtype.parse()?;
    let pairs: Pairs = serde_json::from_str(&std::fs::read_to_string(pairs)?)?;
    let first = pairs.groups.first().filter(|g| !g.documents.is_empty()).ok_or("PAIRS.json has no documents")?;
    let threads = std::env::var("EMBED_THREADS").ok().map(|s| s.parse::<usize>()).transpose()?;

    trim_cpu_heap();
    let before = MemorySnapshot::now();
    let t = Instant::now();
    let mut options = ModelOptions::default();
    options.dtype = Some(dtype);
    options.threads = threads;
    options.llm_reranker = Some(LlmReranker::qwen3());
    options.tuning = embed_core::Tuning::from_env();
    let svc = DenseEmbeddingService::from_spec(ModelSpec::new(model.as_str()).with_options(options)).await?;
    let load_s = t.elapsed().as_secs_f64();
    let info = svc.info().ok_or("no model info")?;
    let loaded_resident = process_resident_bytes();
    let opts = EmbedOptions::default();
    svc.rerank(&first.query, &first.documents[..1], &opts).await?;
    // The process's peak so far (load and warm-up), before the reset.
    let load_peak = peak_resident();

    let peak_resettable = reset_peak();
    let t = Instant::now();
    let (mut scores, mut tokens, mut truncated) = (Vec::new(), 0usize, 0usize);
    for g in &pairs.groups {
        let out = svc.rerank(&g.query, &g.documents, &opts).await?;
        if out.logits.len() != g.documents.len() {
            return Err(format!("{} scores for {} documents", out.logits.len(), g.documents.len()).into());
        }
        tokens += out.total_tokens();
        truncated += out.truncated.iter().filter(|t| **t).count();
        scores.push(out.scores().into_iter().map(|s| s[0]).collect::<Vec<f32>>());
    }
    let seconds = t.elapsed().as_secs_f64();
    let scoring_peak = peak_resident();
    let pairs_n: usize = scores.iter().map(Vec::len).sum();
    std::fs::write(scores_out, serde_json::to_string(&scores)?)?;

    let report = svc.cleanup().await?;
    drop(svc);
    trim_cpu_heap();
    let after = MemorySnapshot::now();
    println!(
        "{}",
        serde_json::json!({
            "impl": "embed-core", "dtype": info.dtype.to_string(), "threads": info.threads, "weight_bytes": info.weight_bytes,
            "load_s": load_s, "loaded_resident": loaded_resident, "peak_resettable": peak_resettable,
            "pairs": pairs_n, "groups": scores.len(), "tokens": tokens, "truncated": truncated, "seconds": seconds,
            "pairs_per_s": pairs_n as f64 / seconds, "tokens_per_s": tokens as f64 / seconds,
            "load_peak_resident": load_peak, "scoring_peak_resident": scoring_peak, "peak_resident": load_peak.max(scoring_peak),
            "released_weight_bytes": report.model_weight_bytes,
            "before": before, "after": after, "live_models_after": live_models(), "live_weight_bytes_after": live_weight_bytes(),
        })
    );
    Ok(())
}
