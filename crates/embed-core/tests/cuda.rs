//! CUDA checks. Gated: they run only with `EMBED_TEST_CUDA=1` (set by `scripts/gpu-check.sh`
//! on a machine with a GPU) and say so when skipped; CPU CI cannot exercise them.
//!
//! * CUDA and CPU give the same vectors (f32), f16/bf16 stay close;
//! * cleanup returns the caching allocator's allocated bytes exactly to the baseline and, after
//!   emptying the cache, reserved bytes too;
//! * a real CUDA out-of-memory splits the batch, and the memory comes back afterwards.

use embed_core::memory::{cuda_memory, live_models};
use embed_core::{DType, DenseEmbeddingService, DeviceSpec, EmbedOptions, EmbeddingService, FaultInjection, ModelOptions, ModelSpec};
use embed_testkit::TinyModel;

fn enabled() -> bool {
    if std::env::var("EMBED_TEST_CUDA").as_deref() == Ok("1") {
        assert!(embed_core::cuda_device_count() > 0, "EMBED_TEST_CUDA=1 but libtorch sees no CUDA device");
        true
    } else {
        eprintln!("skipped: CUDA tests need EMBED_TEST_CUDA=1 and a GPU (see scripts/gpu-check.sh)");
        false
    }
}

fn minilm_shaped() -> TinyModel {
    TinyModel::minilm_shaped()
}

fn texts() -> Vec<String> {
    (0..64).map(|i| format!("the model {i} and the search text ").repeat(1 + i % 9)).collect()
}

#[tokio::test]
async fn cuda_matches_cpu_and_releases_exactly() {
    if !enabled() {
        return;
    }
    let (_tmp, dir) = minilm_shaped().write_temp();
    let spec = |device, dtype| ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions { device, dtype, ..Default::default() });
    let cpu = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cpu, DType::F32)).await.unwrap();
    let expected = cpu.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
    cpu.cleanup().await.unwrap();

    // Warm-up (CUDA context, cuBLAS handles and workspaces), then the baseline.
    let warm = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cuda(0), DType::F32)).await.unwrap();
    warm.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
    warm.cleanup().await.unwrap();
    let base = cuda_memory(0).unwrap();

    for (dtype, min_cos) in [(DType::F32, 0.99999), (DType::F16, 0.999), (DType::Bf16, 0.995)] {
        let svc = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cuda(0), dtype)).await.unwrap();
        assert_eq!(svc.info().unwrap().device, embed_core::ResolvedDevice::Cuda(0));
        let during = cuda_memory(0).unwrap();
        assert!(during.allocated >= base.allocated + svc.info().unwrap().weight_bytes, "weights are on the GPU");
        let got = svc.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
        let worst = got.vectors.iter().zip(&expected.vectors).map(|(a, b)| embed_testkit::cosine(a, b)).fold(1.0, f64::min);
        assert!(worst >= min_cos, "{dtype}: worst cosine to CPU f32 {worst}");
        let report = svc.cleanup().await.unwrap();
        let after = cuda_memory(0).unwrap();
        assert_eq!(after.allocated, base.allocated, "{dtype}: allocated bytes back to baseline exactly");
        assert_eq!(after.reserved, base.reserved, "{dtype}: reserved bytes back after empty_cache");
        assert_eq!(report.cuda_reserved_after, Some(after.reserved));
        eprintln!("{dtype}: worst cosine {worst:.6}, allocated {} -> {} -> {}", base.allocated, during.allocated, after.allocated);
    }
    assert_eq!(live_models(), 0);
}

#[tokio::test]
async fn cuda_oom_splits_and_recovers() {
    if !enabled() {
        return;
    }
    let (_tmp, dir) = minilm_shaped().write_temp();
    let faults = FaultInjection { oom_above_batch_tokens: Some(400), ..Default::default() };
    let spec = ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions { device: DeviceSpec::Cuda(0), faults, ..Default::default() });
    let svc = DenseEmbeddingService::from_spec(spec).await.unwrap();
    let base = cuda_memory(0).unwrap();
    let out = svc.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
    assert_eq!(out.vectors.len(), 64);
    assert!(svc.batch_stats().unwrap().oom_splits > 0, "the CUDA OOM was seen and the batch split");
    assert!(cuda_memory(0).unwrap().num_ooms > base.num_ooms, "the allocator recorded a real OOM");
    svc.cleanup().await.unwrap();
}

#[tokio::test]
async fn missing_cuda_device_is_an_error() {
    if !enabled() {
        return;
    }
    let n = embed_core::cuda_device_count();
    let (_tmp, dir) = TinyModel::default().write_temp();
    let spec = ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions { device: DeviceSpec::Cuda(n), ..Default::default() });
    let err = DenseEmbeddingService::from_spec(spec).await.unwrap_err();
    assert!(matches!(err, embed_core::Error::DeviceUnavailable { .. }), "{err}");
}
