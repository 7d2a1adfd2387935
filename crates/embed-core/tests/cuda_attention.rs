//! Packed (variable-length flash) attention on CUDA. Gated like `cuda.rs`: `#[ignore]`d, so CPU
//! CI lists them as ignored; `--ignored` runs them (`scripts/gpu-check.sh run` does), and then
//! `require_cuda` fails them on a machine without a GPU instead of letting them pass silently.
//!
//! * f16/bf16 on CUDA run packed attention for every batch, and every vector agrees with CPU
//!   f32 and with the padded path (`EMBED_CUDA_ATTENTION=padded`) on the same GPU, text by text,
//!   across a mix of lengths (1 token to the model's limit) batched together;
//! * the packed path returns the caching allocator to its baseline exactly after cleanup.

use embed_core::memory::cuda_memory;
use embed_core::{DType, DenseEmbeddingService, DeviceSpec, EmbedOptions, EmbeddingService, ModelOptions, ModelSpec};
use embed_testkit::memory::require_cuda;
use embed_testkit::{assert_cosines, TinyModel};

/// Lengths from a bare `[CLS] [SEP]` pair to past the model's limit, in an order that makes
/// every batch mix lengths.
fn texts() -> Vec<String> {
    let mut t: Vec<String> = (0..96).map(|i| "the model and the search text ".repeat(1 + (i * 37) % 41)).collect();
    t.push(String::new());
    t.push("a".into());
    t
}

async fn embed(dir: &std::path::Path, device: DeviceSpec, dtype: DType) -> (Vec<Vec<f32>>, embed_core::BatchStats) {
    let spec = ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions::default().with_device(device).with_dtype(dtype).with_tuning(embed_core::Tuning::from_env()));
    let svc = DenseEmbeddingService::from_spec(spec).await.unwrap();
    let out = svc.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
    let stats = svc.batch_stats().unwrap();
    svc.cleanup().await.unwrap();
    (out.vectors, stats)
}

#[tokio::test]
#[ignore = "needs a CUDA GPU; run with cargo test -p embed-core --test cuda_attention -- --ignored"]
async fn packed_attention_matches_padded_and_cpu() {
    require_cuda();
    let (_tmp, dir) = TinyModel::minilm_shaped().write_temp();
    let (cpu, _) = embed(&dir, DeviceSpec::Cpu, DType::F32).await;
    // Warm-up, then the baseline the packed path must return to.
    embed(&dir, DeviceSpec::Cuda(0), DType::F16).await;
    let base = cuda_memory(0).unwrap();

    for (dtype, min_cos) in [(DType::F16, 0.999), (DType::Bf16, 0.995)] {
        std::env::remove_var("EMBED_CUDA_ATTENTION");
        let (packed, stats) = embed(&dir, DeviceSpec::Cuda(0), dtype).await;
        assert!(stats.batches > 0);
        assert_eq!(stats.packed_attention_batches, stats.batches, "{dtype}: every batch ran packed attention");
        let after = cuda_memory(0).unwrap();
        assert_eq!(after.allocated, base.allocated, "{dtype}: allocated bytes back to baseline exactly");

        std::env::set_var("EMBED_CUDA_ATTENTION", "padded");
        let (padded, stats) = embed(&dir, DeviceSpec::Cuda(0), dtype).await;
        std::env::remove_var("EMBED_CUDA_ATTENTION");
        assert_eq!(stats.packed_attention_batches, 0, "{dtype}: EMBED_CUDA_ATTENTION=padded is honoured");

        let to_cpu = assert_cosines(&format!("{dtype}: packed vs CPU f32"), &packed, &cpu, min_cos);
        let to_padded = assert_cosines(&format!("{dtype}: packed vs padded"), &packed, &padded, min_cos);
        eprintln!("{dtype}: packed vs CPU f32 worst cosine {to_cpu:.6}, vs padded {to_padded:.6}");
    }

    // f32 stays on the padded path (flash has no f32 kernel).
    let (f32_vectors, stats) = embed(&dir, DeviceSpec::Cuda(0), DType::F32).await;
    assert_eq!(stats.packed_attention_batches, 0);
    assert_cosines("f32 on CUDA vs CPU f32", &f32_vectors, &cpu, 0.99999);
}
