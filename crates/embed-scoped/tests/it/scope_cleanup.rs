//! Cleanup is observed after every way a scope can end: Ok, Err, panic in the body, timeout,
//! an aborted task, a panic in the model worker, and a failed load.
//! Live-model counts are process-wide, so these tests run one at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embed_core::memory::{live_models, live_weight_bytes, model_threads};
use embed_core::{EmbedOptions, EmbeddingService, FaultInjection, ModelOptions, ModelSpec, ServiceState};
use embed_scoped::{scope, ScopeError, ServiceGuard};
use embed_testkit::memory::wait_for_no_live_models;
use embed_testkit::TinyModel;


fn tiny() -> (tempfile::TempDir, ModelSpec) {
    let (tmp, dir) = TinyModel::default().write_temp();
    (tmp, ModelSpec::new(dir.to_string_lossy()))
}

fn hello() -> Vec<String> {
    vec!["hello world".to_string()]
}

fn assert_all_released() {
    assert_eq!(wait_for_no_live_models(Duration::from_secs(10)), 0, "a model is still live");
    assert_eq!(live_weight_bytes(), 0);
}

#[tokio::test]
async fn ok_body_returns_value_and_cleans_up() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_t, spec) = tiny();
    let seen = Arc::new(Mutex::new(None));
    let s2 = seen.clone();
    let n = scope(spec, |svc| async move {
        assert_eq!(live_models(), 1);
        *s2.lock().unwrap() = Some(svc.clone());
        Ok::<_, embed_core::Error>(svc.embed_texts(&hello(), &EmbedOptions::default()).await?.vectors.len())
    })
    .await
    .unwrap();
    assert_eq!(n, 1);
    // Cleanup was awaited before the scope returned: nothing live, no waiting needed.
    assert_eq!(live_models(), 0);
    // A handle smuggled out of the scope finds a closed service, not a live model.
    let leaked = seen.lock().unwrap().take().unwrap();
    assert_eq!(leaked.state(), ServiceState::Closed);
    assert!(leaked.embed_texts(&hello(), &EmbedOptions::default()).await.is_err());
}

#[derive(Debug, PartialEq)]
struct MyError(&'static str);

#[tokio::test]
async fn err_body_is_reported_and_cleans_up() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_t, spec) = tiny();
    let err = scope(spec, |_svc| async move { Err::<(), _>(MyError("body failed")) }).await.unwrap_err();
    assert!(matches!(err, ScopeError::Body(MyError("body failed"))), "{err:?}");
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn panic_in_body_is_resumed_after_cleanup() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_t, spec) = tiny();
    let handle = tokio::spawn(scope(spec, |svc| async move {
        svc.embed_texts(&hello(), &EmbedOptions::default()).await.unwrap();
        panic!("body panicked");
        #[allow(unreachable_code)]
        Ok::<(), embed_core::Error>(())
    }));
    let err = handle.await.unwrap_err();
    assert!(err.is_panic(), "the panic must propagate, not be swallowed");
    let msg = err.into_panic();
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"body panicked"));
    assert_eq!(live_models(), 0, "cleanup ran before the panic was resumed");
}

#[tokio::test]
async fn timeout_cancellation_releases_the_model() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_t, spec) = tiny();
    let entered = Arc::new(AtomicBool::new(false));
    let e2 = entered.clone();
    let res = tokio::time::timeout(
        Duration::from_millis(300),
        scope(spec, |_svc| async move {
            e2.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), embed_core::Error>(())
        }),
    )
    .await;
    assert!(res.is_err(), "timed out");
    assert!(entered.load(Ordering::SeqCst), "the body ran with a loaded model");
    assert_all_released();
}

#[tokio::test]
async fn aborting_the_task_releases_the_model() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_t, spec) = tiny();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(scope(spec, |svc| async move {
        svc.embed_texts(&hello(), &EmbedOptions::default()).await.unwrap();
        tx.send(()).unwrap();
        std::future::pending::<()>().await;
        Ok::<(), embed_core::Error>(())
    }));
    rx.await.unwrap();
    assert_eq!(live_models(), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_all_released();
}

#[tokio::test]
async fn worker_panic_reaches_the_caller_and_the_scope_still_cleans_up() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_t, mut spec) = tiny();
    spec.options = ModelOptions::default().with_faults(FaultInjection { panic_on_text: Some("boom".into()), ..Default::default() });
    let err = scope(spec, |svc| async move { svc.embed_texts(&["boom".to_string()], &EmbedOptions::default()).await })
        .await
        .unwrap_err();
    assert!(matches!(err, ScopeError::Body(embed_core::Error::WorkerPanicked { .. })), "{err:?}");
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn unknown_model_returns_the_load_error_and_leaves_nothing() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = ran.clone();
    let err = scope(ModelSpec::new("/definitely/not/a/model"), |_svc| async move {
        r2.store(true, Ordering::SeqCst);
        Ok::<(), embed_core::Error>(())
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ScopeError::Load(embed_scoped::Error::Core(embed_core::Error::InvalidSource { .. }))), "{err:?}");
    assert!(err.to_string().contains("/definitely/not/a/model"));
    assert!(!ran.load(Ordering::SeqCst), "the body must not run without a model");
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn guard_close_reports_and_drop_releases() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_t, spec) = tiny();
    let guard = ServiceGuard::open(spec.clone()).await.unwrap();
    guard.embed_texts(&hello(), &EmbedOptions::default()).await.unwrap();
    let bytes = guard.info().unwrap().weight_bytes;
    let report = guard.close().await.unwrap();
    assert_eq!(report.model_weight_bytes, bytes);
    assert_eq!(live_models(), 0);

    let guard = ServiceGuard::open(spec.clone()).await.unwrap();
    let shared = ServiceGuard::service(&guard);
    drop(guard);
    assert_all_released();
    assert!(shared.embed_texts(&hello(), &EmbedOptions::default()).await.is_err());

    // Cancelled while opening, with the model loaded and held by its worker (the load-delay
    // fault keeps it there until the open is dropped): it is released and the worker exits.
    let faults = FaultInjection { load_delay: Some(Duration::from_secs(3600)), ..Default::default() };
    {
        let open = ServiceGuard::open(spec.with_options(ModelOptions::default().with_faults(faults)));
        tokio::pin!(open);
        while live_models() == 0 {
            tokio::select! {
                r = &mut open => panic!("the open finished although its worker waits an hour: {:?}", r.map(|_| ())),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        assert_eq!(model_threads(), 1);
    }
    assert_all_released();
    assert_eq!(model_threads(), 0, "no model thread remains");
}
