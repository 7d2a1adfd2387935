//! Load → embed → cleanup 20 times with the real MiniLM in one process: resident memory returns
//! to within 5 % of the level after the first cycle, and reported weight bytes are released.
//! (One test in this binary: process-wide figures must not be disturbed by other tests.)

use embed_core::memory::{live_models, live_weight_bytes};
use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::memory::{growth, mib, settled_snapshot};
use embed_testkit::{minilm_dir, reference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_load_embed_cleanup_cycles_stay_flat() {
    let texts: Vec<String> = reference().into_iter().map(|i| i.text).collect();
    let spec = ModelSpec::new(minilm_dir().to_string_lossy());
    let mut after_first = None;
    let mut after_first_baseline = None;
    let mut levels = Vec::new();
    for cycle in 0..20 {
        let svc = DenseEmbeddingService::from_spec(spec.clone()).await.unwrap();
        let bytes = svc.info().unwrap().weight_bytes;
        assert!(bytes > 80_000_000, "MiniLM f32 weights are ~90 MB, got {bytes}");
        assert_eq!(live_weight_bytes(), bytes);
        svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
        let report = svc.cleanup().await.unwrap();
        assert_eq!(report.weight_bytes_freed, bytes);
        assert_eq!(live_models(), 0);
        assert_eq!(live_weight_bytes(), 0);
        let snap = settled_snapshot();
        levels.push(snap.resident_anon);
        eprintln!("cycle {cycle}: anonymous resident {:.1} MiB, allocator in use {:.1} MiB", mib(snap.resident_anon), mib(snap.cpu_allocator));
        match after_first {
            None => {
                after_first = Some(snap.resident_anon);
                after_first_baseline = Some(embed_testkit::memory::Baseline(snap));
            }
            Some(base) => {
                let g = growth(base, snap.resident_anon);
                assert!(g <= 0.05, "cycle {cycle}: resident {:.1} MiB vs {:.1} MiB after cycle 1 (+{:.1}%)",
                    mib(snap.resident_anon), mib(base), g * 100.0);
            }
        }
    }
    let diff = after_first_baseline.expect("taken after cycle 1").diff();
    assert_eq!((diff.live_models, diff.model_weights), (0, 0));
    assert!(diff.cpu_allocator.abs() < 8 << 20, "allocator in-use bytes moved {} since cycle 1", diff.cpu_allocator);
    eprintln!("since cycle 1: {diff:?}");
    eprintln!("anonymous resident MiB per cycle: {:?}", levels.iter().map(|b| format!("{:.1}", mib(*b))).collect::<Vec<_>>());
}
