//! The scoped APIs over any `EmbeddingService`: embed-testkit's fake counts its live
//! instances, so every path's cleanup is observed without libtorch.

use std::time::Duration;

use embed_core::{EmbedOptions, EmbeddingService, ModelSpec};
use embed_scoped::{scope_with, ScopeError, ServiceGuard};
use embed_testkit::cleanup::{cancel_once_started, run_to_panic};
use embed_testkit::{live_fakes, FakeService};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn every_path_releases_the_fake() {
    let _s = SERIAL.lock().await;
    let ok = scope_with(FakeService::new(8), ModelSpec::new("fake"), |svc| async move {
        assert_eq!(live_fakes(), 1);
        svc.embed_texts(&["a".into()], &EmbedOptions::default()).await
    })
    .await
    .unwrap();
    assert_eq!(ok.vectors[0].len(), 8);
    assert_eq!(live_fakes(), 0);

    let err = scope_with(FakeService::new(8), ModelSpec::new("fake"), |_svc| async move { Err::<(), _>("no") }).await;
    assert!(matches!(err, Err(ScopeError::Body("no"))));
    assert_eq!(live_fakes(), 0);

    let msg = run_to_panic(scope_with(FakeService::new(8), ModelSpec::new("fake"), |_svc| async move {
        panic!("fake body panic");
        #[allow(unreachable_code)]
        Ok::<(), ()>(())
    }))
    .await;
    assert_eq!(msg.as_deref(), Some("fake body panic"));
    assert_eq!(live_fakes(), 0);

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    cancel_once_started(
        scope_with(FakeService::new(8), ModelSpec::new("fake"), |_svc| async move {
            let _ = tx.send(());
            std::future::pending::<()>().await;
            Ok::<(), ()>(())
        }),
        async {
            let _ = rx.await;
        },
    )
    .await;
    assert_eq!(live_fakes(), 0);

    let err = scope_with(FakeService::new(8), ModelSpec::new("fail"), |_svc| async move { Ok::<(), ()>(()) }).await;
    assert!(matches!(err, Err(ScopeError::Load(_))));
    assert_eq!(live_fakes(), 0);
}

#[tokio::test]
async fn cancelled_slow_load_leaves_nothing() {
    let _s = SERIAL.lock().await;
    let svc = std::sync::Arc::new(FakeService::new(4).with_load_delay(Duration::from_millis(200)));
    let guard = ServiceGuard::from_service(svc.clone());
    let _ = tokio::time::timeout(Duration::from_millis(20), guard.load(ModelSpec::new("fake"))).await;
    drop(guard);
    assert_eq!(live_fakes(), 0);
}
