//! 50 scope cycles with the real MiniLM: resident memory stays within 5 % of the level after
//! cycle 1. (One test in this binary so nothing else moves the process's memory.)

use embed_core::memory::live_models;
use embed_core::{EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::memory::{growth, mib, settled_snapshot};
use embed_testkit::{minilm_dir, reference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_minilm_scope_cycles_stay_flat() {
    let texts: Vec<String> = reference().into_iter().map(|i| i.text).take(8).collect();
    let spec = ModelSpec::new(minilm_dir().to_string_lossy());
    let mut base = None;
    let mut peak_growth = 0.0f64;
    for cycle in 0..50 {
        let t = texts.clone();
        embed_scoped::scope(spec.clone(), |svc| async move { svc.embed_texts(&t, &EmbedOptions::default()).await })
            .await
            .unwrap();
        assert_eq!(live_models(), 0);
        let rss = settled_snapshot().resident_anon;
        match base {
            None => base = Some(rss),
            Some(b) => {
                let g = growth(b, rss);
                peak_growth = peak_growth.max(g);
                assert!(g <= 0.05, "cycle {cycle}: {:.1} MiB vs {:.1} MiB after cycle 1", mib(rss), mib(b));
            }
        }
    }
    eprintln!("50 MiniLM scope cycles: base {:.1} MiB, worst growth {:.2}%", mib(base.unwrap()), peak_growth * 100.0);
}
