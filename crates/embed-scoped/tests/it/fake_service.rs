//! The scoped APIs over any `EmbeddingService`: embed-testkit's fake counts its live
//! instances and the ones dropped while still live, so every path's cleanup is observed without
//! libtorch — and a path that leaves the release to the service's `Drop` is caught.

use std::time::Duration;

use embed_core::{EmbedOptions, EmbeddingService, ModelSpec, ServiceState};
use embed_scoped::{scope_with, ScopeError, ServiceGuard};
use embed_testkit::cleanup::{cancel_once_started, run_to_panic};
use embed_testkit::{fakes_dropped_while_live, live_fakes, FakeService};


/// Nothing live, and nothing was released by a fake's `Drop` since `dropped_before`.
#[track_caller]
fn assert_cleaned_up(path: &str, dropped_before: usize) {
    assert_eq!(live_fakes(), 0, "{path}: a fake is still live");
    assert_eq!(
        fakes_dropped_while_live() - dropped_before,
        0,
        "{path}: the fake was dropped while live: the scope left its cleanup to Drop"
    );
}

#[tokio::test]
async fn every_path_releases_the_fake() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let dropped = fakes_dropped_while_live();
    let ok = scope_with(FakeService::new(8), ModelSpec::new("fake"), |svc| async move {
        assert_eq!(live_fakes(), 1);
        svc.embed_texts(&["a".into()], &EmbedOptions::default()).await
    })
    .await
    .unwrap();
    assert_eq!(ok.vectors[0].len(), 8);
    assert_cleaned_up("Ok body", dropped);

    let err = scope_with(FakeService::new(8), ModelSpec::new("fake"), |_svc| async move { Err::<(), _>("no") }).await;
    assert!(matches!(err, Err(ScopeError::Body("no"))));
    assert_cleaned_up("Err body", dropped);

    let msg = run_to_panic(scope_with(FakeService::new(8), ModelSpec::new("fake"), |_svc| async move {
        panic!("fake body panic");
        #[allow(unreachable_code)]
        Ok::<(), ()>(())
    }))
    .await;
    assert_eq!(msg.as_deref(), Some("fake body panic"));
    assert_cleaned_up("panicking body", dropped);

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
    assert_cleaned_up("cancelled scope", dropped);

    let err = scope_with(FakeService::new(8), ModelSpec::new("fail"), |_svc| async move { Ok::<(), ()>(()) }).await;
    assert!(matches!(err, Err(ScopeError::Load(_))));
    assert_cleaned_up("failed load", dropped);
}

#[tokio::test]
async fn cancelled_slow_load_leaves_nothing() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let dropped = fakes_dropped_while_live();
    let svc = std::sync::Arc::new(FakeService::new(4).with_load_delay(Duration::from_secs(3600)));
    let guard = ServiceGuard::from_service(svc.clone());
    {
        // Drive the load until the fake holds its model, then drop the load half-way.
        let load = guard.load(ModelSpec::new("fake"));
        tokio::pin!(load);
        while live_fakes() == 0 {
            tokio::select! {
                r = &mut load => panic!("a load of an hour finished: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        assert_eq!((live_fakes(), svc.state()), (1, ServiceState::Loading), "cancelled while holding the model");
    }
    assert_eq!(svc.state(), ServiceState::Unloaded, "the cancelled load left the service unloaded");
    drop(guard);
    assert_cleaned_up("cancelled load", dropped);
    drop(svc);
    assert_cleaned_up("cancelled load, service dropped", dropped);
}

/// The fake's own accounting: a service dropped while holding its model is counted.
#[tokio::test]
async fn a_fake_dropped_while_live_is_counted() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let dropped = fakes_dropped_while_live();
    let fake = FakeService::new(4);
    fake.load(ModelSpec::new("fake")).await.unwrap();
    assert_eq!(live_fakes(), 1);
    drop(fake);
    assert_eq!(live_fakes(), 0, "Drop still releases");
    assert_eq!(fakes_dropped_while_live() - dropped, 1);
}
