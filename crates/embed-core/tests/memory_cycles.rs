//! Load → embed → cleanup 20 times with the real MiniLM in one process. Each cleanup frees the
//! model's weights in the C allocator (measured, not taken from the cleanup report), and after
//! the first cycle the allocator's in-use bytes stay flat within max(8 MiB, 3 %) — the precise
//! figure — while anonymous RSS, which also holds thread stacks and lazily grown malloc arenas,
//! gets a bounded allowance of max(24 MiB, 5 %): the rules of `cargo xtask leak-check`.
//! (One test in this binary: process-wide figures must not be disturbed by other tests.)

use embed_core::memory::{live_models, live_weight_bytes, model_threads};
use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::memory::{assert_weights_freed, settled_snapshot, CycleLevels};
use embed_testkit::{minilm_dir, reference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_load_embed_cleanup_cycles_stay_flat() {
    let texts: Vec<String> = reference().into_iter().map(|i| i.text).collect();
    let spec = ModelSpec::new(minilm_dir().to_string_lossy());
    let mut levels = CycleLevels::new();
    for cycle in 0..20 {
        let svc = DenseEmbeddingService::from_spec(spec.clone()).await.unwrap();
        let bytes = svc.info().unwrap().weight_bytes;
        assert!(bytes > 80_000_000, "MiniLM f32 weights are ~90 MB, got {bytes}");
        assert_eq!(live_weight_bytes(), bytes);
        svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
        let loaded = settled_snapshot();
        let report = svc.cleanup().await.unwrap();
        assert_eq!(report.model_weight_bytes, bytes, "the report names the model's size");
        assert_eq!((live_models(), model_threads(), live_weight_bytes()), (0, 0, 0));
        let released = levels.record(cycle);
        assert_weights_freed(&format!("cycle {cycle}"), &loaded, &released, bytes);
    }
    eprintln!("{}", levels.summary());
}
