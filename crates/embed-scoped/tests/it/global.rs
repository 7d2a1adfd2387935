//! The global service: single-flight first use, failed init not cached, replace under load.

use std::sync::Arc;
use std::time::Duration;

use embed_core::memory::live_models;
use embed_core::{EmbedOptions, EmbeddingService, ModelSpec};
use embed_scoped::GlobalService;
use embed_testkit::memory::wait_for_no_live_models;
use embed_testkit::TinyModel;


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_first_callers_load_once() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_tmp, dir) = TinyModel::default().write_temp();
    let global = Arc::new(GlobalService::new(ModelSpec::new(dir.to_string_lossy())));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let g = global.clone();
            tokio::spawn(async move {
                let svc = g.get().await.unwrap();
                svc.embed_texts(&[format!("caller {i}")], &EmbedOptions::default()).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(global.stats().loads, 1, "the model was loaded more than once");
    assert_eq!(live_models(), 1);
    global.shutdown().await.unwrap();
    assert_eq!(live_models(), 0);
    assert!(!global.is_loaded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_init_is_not_cached() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model-arrives-later");
    std::fs::create_dir_all(&dir).unwrap();
    let global = GlobalService::new(ModelSpec::new(dir.to_string_lossy()));
    let err = global.get().await.err().expect("empty directory cannot load");
    assert!(err.to_string().contains("config.json"), "{err}");
    assert_eq!(global.stats().load_failures, 1);
    assert_eq!(live_models(), 0);
    TinyModel::default().write(&dir);
    let svc = global.get().await.expect("the next call retries");
    assert!(svc.is_ready());
    drop(svc);
    global.shutdown().await.unwrap();
    assert_eq!(live_models(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_under_load_loses_no_request() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_t1, a) = TinyModel { seed: 1, ..TinyModel::default() }.write_temp();
    let (_t2, b) = TinyModel { seed: 2, ..TinyModel::default() }.write_temp();
    // A drain timeout far above the test's length: hitting it means leases were not tracked.
    let global = Arc::new(
        GlobalService::new(ModelSpec::new(a.to_string_lossy()).named("a")).with_drain_timeout(Duration::from_secs(20)),
    );
    drop(global.get().await.unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (g, stop) = (global.clone(), stop.clone());
            tokio::spawn(async move {
                let mut done = 0u32;
                let mut models = std::collections::BTreeSet::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let svc = g.get().await.expect("get never fails during replace");
                    let out = svc
                        .embed_texts(&[format!("client {c} request {done}")], &EmbedOptions::default())
                        .await
                        .expect("no request is lost while the model is replaced");
                    assert_eq!(out.vectors.len(), 1);
                    models.insert(svc.info().unwrap().name);
                    done += 1;
                }
                (done, models)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = global.replace(ModelSpec::new(b.to_string_lossy()).named("b")).await.unwrap();
    assert!(report.model_weight_bytes > 0, "the report names the old model (its worker exited)");
    assert_eq!(global.stats().forced_retirements, 0, "replace had to force the old model out");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut saw_b = false;
    for c in clients {
        let (done, models) = c.await.unwrap();
        assert!(done > 0);
        saw_b |= models.contains("b");
    }
    assert!(saw_b, "requests after the swap use the new model");
    assert_eq!(live_models(), 1);
    global.shutdown().await.unwrap();
    assert_eq!(wait_for_no_live_models(Duration::from_secs(5)), 0);
}
