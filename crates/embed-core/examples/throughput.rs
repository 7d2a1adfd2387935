//! Measures `embed_texts` throughput over a corpus; used by `cargo xtask bench`.
//!
//! `cargo run --release -p embed-core --example throughput -- MODEL_DIR CORPUS [f32|bf16|int8] [ROUNDS] [OUT.json]`
//! Prints one JSON line per round: texts/s, tokens/s, the intra-op threads the model's worker
//! runs with, and writes the vectors' file when asked. `EMBED_THREADS=N` sets the worker's
//! thread count (`ModelOptions::threads`); the first 64 texts are embedded once before timing,
//! the same warm-up as the sentence-transformers side (bench/st_throughput.py).

use std::time::Instant;

use embed_core::{DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, Embeddings, ModelOptions, ModelSpec};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().ok_or("usage: throughput MODEL_DIR CORPUS [dtype] [rounds] [vectors.json]")?;
    let corpus = args.get(1).ok_or("missing CORPUS")?;
    let dtype: DType = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or_default();
    let rounds: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let texts: Vec<String> =
        std::fs::read_to_string(corpus)?.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect();

    let threads = std::env::var("EMBED_THREADS").ok().map(|s| s.parse::<usize>()).transpose()?;
    let t0 = Instant::now();
    // The thread count is applied on the worker thread, where the forward passes run.
    // The EMBED_* variables set the kernels' switches, as they do for the server.
    let mut options = ModelOptions::default().with_dtype(dtype).with_tuning(embed_core::Tuning::from_env());
    options.threads = threads;
    // Batching knobs, for tuning experiments.
    if let Some(n) = std::env::var("EMBED_MAX_BATCH_TOKENS").ok().and_then(|s| s.parse().ok()) {
        options.max_batch_tokens = Some(n);
    }
    if let Some(n) = std::env::var("EMBED_MAX_BATCH_SIZE").ok().and_then(|s| s.parse().ok()) {
        options.max_batch_size = Some(n);
    }
    // `EMBED_INT8_KERNEL=weight-only` (or `onednn`): which int8 kernel, for comparison.
    if let Ok(k) = std::env::var("EMBED_INT8_KERNEL") {
        options.int8_kernel = Some(k.parse()?);
    }
    let spec = ModelSpec::new(model.as_str()).with_options(options);
    let svc = DenseEmbeddingService::from_spec(spec).await?;
    let load_s = t0.elapsed().as_secs_f64();
    let worker_threads = svc.info().map(|i| i.threads).unwrap_or(0);
    let weight_bytes = svc.info().map(|i| i.weight_bytes).unwrap_or(0);
    let opts = EmbedOptions::default();
    // `EMBED_REQUEST_TEXTS=N`: the corpus in sequential requests of N texts (the server's view).
    let per_request: Option<usize> = std::env::var("EMBED_REQUEST_TEXTS").ok().and_then(|s| s.parse().ok()).filter(|&n| n > 0);
    svc.embed_texts(&texts[..texts.len().min(WARM_UP_TEXTS)], &opts).await?;
    let mut last = None;
    for round in 0..rounds {
        let t = Instant::now();
        let out = match per_request {
            None => svc.embed_texts(&texts, &opts).await?,
            Some(n) => {
                // One request after another, as a lone client of a server sends them.
                let mut all = Embeddings::default();
                for chunk in texts.chunks(n) {
                    let part = svc.embed_texts(chunk, &opts).await?;
                    all.vectors.extend(part.vectors);
                    all.token_counts.extend(part.token_counts);
                    all.truncated.extend(part.truncated);
                }
                all
            }
        };
        let s = t.elapsed().as_secs_f64();
        println!(
            "{{\"impl\":\"embed-core\",\"dtype\":\"{dtype}\",\"round\":{round},\"texts\":{},\"tokens\":{},\"seconds\":{s:.4},\"texts_per_s\":{:.1},\"tokens_per_s\":{:.1},\"load_s\":{load_s:.3},\"threads\":{worker_threads},\"weight_bytes\":{weight_bytes}}}",
            texts.len(),
            out.total_tokens(),
            texts.len() as f64 / s,
            out.total_tokens() as f64 / s
        );
        last = Some(out);
    }
    if let (Some(path), Some(out)) = (args.get(4), last) {
        std::fs::write(path, serde_json_vectors(&out.vectors))?;
    }
    eprintln!("batch stats: {:?}", svc.batch_stats());
    svc.cleanup().await?;
    Ok(())
}

/// Texts embedded once before the timed rounds (as bench/st_throughput.py does).
const WARM_UP_TEXTS: usize = 64;

fn serde_json_vectors(v: &[Vec<f32>]) -> String {
    let rows: Vec<String> =
        v.iter().map(|r| format!("[{}]", r.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))).collect();
    format!("[{}]", rows.join(","))
}
