//! Soak: many concurrent small requests against one model; prints memory every 2 s.
//! `cargo run -p embed-core --example soak -- MODEL_DIR CORPUS [TASKS] [SECONDS]`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embed_core::memory::{cpu_allocator_in_use_bytes, process_anon_resident_bytes, trim_cpu_heap};
use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let corpus: Arc<Vec<String>> = Arc::new(std::fs::read_to_string(&args[1])?.lines().map(String::from).collect());
    let tasks: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let svc = Arc::new(DenseEmbeddingService::from_spec(ModelSpec::new(args[0].as_str())).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..tasks)
        .map(|c| {
            let (svc, stop, corpus) = (svc.clone(), stop.clone(), corpus.clone());
            tokio::spawn(async move {
                let mut i = c * 97;
                while !stop.load(Ordering::Relaxed) {
                    let t: Vec<String> = (0..4).map(|k| corpus[(i + k) % corpus.len()].clone()).collect();
                    i += 4;
                    svc.embed_texts(&t, &EmbedOptions::default()).await.unwrap();
                }
            })
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        trim_cpu_heap();
        println!(
            "t={:>3}s anon {:.1} MiB allocator {:.1} MiB batches {:?}",
            start.elapsed().as_secs(),
            process_anon_resident_bytes() as f64 / 1048576.0,
            cpu_allocator_in_use_bytes() as f64 / 1048576.0,
            svc.batch_stats().map(|b| b.batches)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await?;
    }
    svc.cleanup().await?;
    trim_cpu_heap();
    println!("after cleanup: anon {:.1} MiB allocator {:.1} MiB", process_anon_resident_bytes() as f64 / 1048576.0, cpu_allocator_in_use_bytes() as f64 / 1048576.0);
    Ok(())
}
