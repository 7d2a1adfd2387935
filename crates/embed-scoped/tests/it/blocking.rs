//! The blocking mirror: cleanup on return, on error and on panic; refusal inside a runtime.

use embed_core::memory::live_models;
use embed_core::{EmbedOptions, ModelSpec};
use embed_scoped::blocking::{scope, BlockingService};
use embed_scoped::{Error, ScopeError};
use embed_testkit::TinyModel;


#[test]
fn blocking_scope_paths() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial_blocking();
    let (_tmp, dir) = TinyModel::default().write_temp();
    let spec = ModelSpec::new(dir.to_string_lossy());

    let v = scope(spec.clone(), |svc| svc.embed_texts(&["a".to_string()], &EmbedOptions::default())).unwrap();
    assert_eq!(v.vectors.len(), 1);
    assert_eq!(live_models(), 0);

    let e = scope(spec.clone(), |_svc| Err::<(), _>("nope")).unwrap_err();
    assert!(matches!(e, ScopeError::Body("nope")));
    assert_eq!(live_models(), 0);

    let p = std::panic::catch_unwind(|| scope(spec.clone(), |_svc| -> Result<(), Error> { panic!("sync body panicked") }));
    assert!(p.is_err());
    assert_eq!(live_models(), 0);

    let svc = BlockingService::open(spec.clone()).unwrap();
    assert_eq!(svc.info().unwrap().dimension, 32);
    let report = svc.close().unwrap();
    assert!(report.model_weight_bytes > 0);
    assert_eq!(live_models(), 0);
}

#[test]
fn refused_inside_an_async_runtime() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial_blocking();
    let (_tmp, dir) = TinyModel::default().write_temp();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(async { BlockingService::open(ModelSpec::new(dir.to_string_lossy())).err().unwrap() });
    assert!(matches!(err, Error::InsideAsyncRuntime));
    assert_eq!(live_models(), 0);
}
