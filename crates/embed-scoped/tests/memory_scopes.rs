//! 50 scope cycles with the real MiniLM: after cycle 1, C-allocator in-use bytes stay within
//! max(8 MiB, 3 %) and anonymous RSS within max(24 MiB, 5 %) (the rules of
//! `cargo xtask leak-check`), and each scope frees the model's weights in the allocator.
//! (One test in this binary so nothing else moves the process's memory.)

use embed_core::{EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::memory::{assert_weights_freed, settled_snapshot, CycleLevels};
use embed_testkit::{minilm_dir, reference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_minilm_scope_cycles_stay_flat() {
    let texts: Vec<String> = reference().into_iter().map(|i| i.text).take(8).collect();
    let spec = ModelSpec::new(minilm_dir().to_string_lossy());
    let mut levels = CycleLevels::new();
    for cycle in 0..50 {
        let t = texts.clone();
        let (loaded, bytes) = embed_scoped::scope(spec.clone(), |svc| async move {
            svc.embed_texts(&t, &EmbedOptions::default()).await?;
            Ok::<_, embed_core::Error>((settled_snapshot(), svc.info().unwrap().weight_bytes))
        })
        .await
        .unwrap();
        let released = levels.record(cycle);
        assert_weights_freed(&format!("scope {cycle}"), &loaded, &released, bytes);
    }
    eprintln!("50 MiniLM scope cycles: {}", levels.summary());
}
