//! CUDA checks. Gated with `#[ignore]`: CPU CI lists them as ignored rather than passing them
//! unchecked. `scripts/gpu-check.sh run` runs them on a machine with a GPU
//! (`EMBED_TEST_CUDA=1 cargo test -p embed-core --test cuda -- --ignored`); run there, each one
//! fails unless libtorch sees a CUDA device.
//!
//! * CUDA and CPU give the same vectors (f32), f16/bf16 stay close;
//! * cleanup returns the caching allocator's allocated bytes exactly to the baseline and, after
//!   emptying the cache, reserved bytes too;
//! * a real CUDA out-of-memory splits the batch, and the memory comes back afterwards;
//! * every model family's fixture on CUDA in f32, bf16 and f16 against CPU f32, memory back
//!   exactly after each.

use embed_core::memory::{cuda_memory, live_models};
use embed_core::{DType, DenseEmbeddingService, DeviceSpec, EmbedOptions, EmbeddingService, FaultInjection, ModelOptions, ModelSpec, Offload, RetrievalTasks};
use embed_testkit::memory::require_cuda;
use embed_testkit::{assert_cosines, TinyModel};


fn minilm_shaped() -> TinyModel {
    TinyModel::minilm_shaped()
}

fn texts() -> Vec<String> {
    (0..64).map(|i| format!("the model {i} and the search text ").repeat(1 + i % 9)).collect()
}

#[tokio::test]
#[ignore = "needs a CUDA GPU; run with EMBED_TEST_CUDA=1 cargo test -p embed-core --test cuda -- --ignored"]
async fn cuda_matches_cpu_and_releases_exactly() {
    require_cuda();
    let (_tmp, dir) = minilm_shaped().write_temp();
    let spec = |device, dtype| ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions::default().with_device(device).with_dtype(dtype));
    let cpu = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cpu, DType::F32)).await.unwrap();
    let expected = cpu.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
    cpu.cleanup().await.unwrap();

    // Warm-up (CUDA context, cuBLAS handles and workspaces), then the baseline.
    let warm = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cuda(0), DType::F32)).await.unwrap();
    warm.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
    warm.cleanup().await.unwrap();
    let base = cuda_memory(0).unwrap();

    // int8 on CUDA is weight-only: int8 weights dequantized into bf16 for each matmul.
    let mut weights = std::collections::HashMap::new();
    for (dtype, min_cos) in [(DType::F32, 0.99999), (DType::F16, 0.999), (DType::Bf16, 0.995), (DType::Int8, 0.99)] {
        let svc = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cuda(0), dtype)).await.unwrap();
        assert_eq!(svc.info().unwrap().device, embed_core::ResolvedDevice::Cuda(0));
        let int8_kernel = svc.info().unwrap().int8_kernel;
        assert_eq!(int8_kernel, (dtype == DType::Int8).then_some(embed_core::Int8Kernel::WeightOnly), "{dtype}");
        weights.insert(dtype, svc.info().unwrap().weight_bytes);
        let during = cuda_memory(0).unwrap();
        assert!(during.allocated >= base.allocated + svc.info().unwrap().weight_bytes, "weights are on the GPU");
        let got = svc.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
        // Item by item: a NaN (the realistic half-precision failure) fails.
        let worst = assert_cosines(&format!("{dtype} on CUDA vs CPU f32"), &got.vectors, &expected.vectors, min_cos);
        let report = svc.cleanup().await.unwrap();
        let after = cuda_memory(0).unwrap();
        assert_eq!(after.allocated, base.allocated, "{dtype}: allocated bytes back to baseline exactly");
        assert_eq!(after.reserved, base.reserved, "{dtype}: reserved bytes back after empty_cache");
        assert_eq!(report.cuda_reserved_after, Some(after.reserved));
        eprintln!("{dtype}: worst cosine {worst:.6}, allocated {} -> {} -> {}", base.allocated, during.allocated, after.allocated);
    }
    // Weight memory: int8 about a quarter of f32's and well under bf16's.
    assert!(weights[&DType::Int8] * 10 <= weights[&DType::F32] * 3, "int8 {} vs f32 {}", weights[&DType::Int8], weights[&DType::F32]);
    assert!(weights[&DType::Int8] * 10 <= weights[&DType::Bf16] * 6, "int8 {} vs bf16 {}", weights[&DType::Int8], weights[&DType::Bf16]);
    assert_eq!(live_models(), 0);
}

#[tokio::test]
#[ignore = "needs a CUDA GPU; run with EMBED_TEST_CUDA=1 cargo test -p embed-core --test cuda -- --ignored"]
async fn cuda_oom_splits_and_recovers() {
    require_cuda();
    let (_tmp, dir) = minilm_shaped().write_temp();
    let spec = |faults| {
        ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions::default().with_device(DeviceSpec::Cuda(0)).with_faults(faults))
    };
    // The same model without the fault: the expected vectors, and the warm-up (CUDA context,
    // cuBLAS workspace) before the baseline.
    let clean = DenseEmbeddingService::from_spec(spec(FaultInjection::default())).await.unwrap();
    let expected = clean.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
    clean.cleanup().await.unwrap();
    let base = cuda_memory(0).unwrap();

    let faults = FaultInjection { oom_above_batch_tokens: Some(400), ..Default::default() };
    let svc = DenseEmbeddingService::from_spec(spec(faults)).await.unwrap();
    let loaded = cuda_memory(0).unwrap();
    let out = svc.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
    assert!(svc.batch_stats().unwrap().oom_splits > 0, "the CUDA OOM was seen and the batch split");
    let after_oom = cuda_memory(0).unwrap();
    assert!(after_oom.num_ooms > base.num_ooms, "the allocator recorded a real OOM");
    // Nothing of the failed passes stays allocated: only the weights are live between requests.
    assert_eq!(after_oom.allocated, loaded.allocated, "allocated bytes after the OOM vs right after the load");
    // The split passes give the vectors one pass gives.
    assert_cosines("split after a CUDA OOM vs one pass", &out.vectors, &expected.vectors, 0.99999);
    // And the service still serves.
    let again = svc.embed_texts(&texts()[..4], &EmbedOptions::default()).await.unwrap();
    assert_cosines("after the OOM", &again.vectors, &expected.vectors[..4], 0.99999);

    svc.cleanup().await.unwrap();
    let after = cuda_memory(0).unwrap();
    assert_eq!(after.allocated, base.allocated, "allocated bytes back to the baseline after cleanup");
    assert_eq!(after.reserved, base.reserved, "reserved bytes back after cleanup emptied the cache");
    assert_eq!(live_models(), 0);
}

#[tokio::test]
#[ignore = "needs a CUDA GPU; run with EMBED_TEST_CUDA=1 cargo test -p embed-core --test cuda -- --ignored"]
async fn missing_cuda_device_is_an_error() {
    require_cuda();
    let n = embed_core::cuda_device_count();
    let (_tmp, dir) = TinyModel::default().write_temp();
    let spec = ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions::default().with_device(DeviceSpec::Cuda(n)));
    let err = DenseEmbeddingService::from_spec(spec).await.unwrap_err();
    assert!(matches!(err, embed_core::Error::DeviceUnavailable { .. }), "{err}");
}

#[tokio::test]
#[ignore = "needs a CUDA GPU; run with EMBED_TEST_CUDA=1 cargo test -p embed-core --test cuda -- --ignored"]
async fn every_family_on_cuda_matches_cpu_and_releases_exactly() {
    require_cuda();
    // Warm-up in every dtype (CUDA context, cuBLAS handles and workspaces) before any baseline.
    let warm_dir = embed_testkit::fixture_dir("bert");
    for dtype in [DType::F32, DType::Bf16, DType::F16] {
        let spec = ModelSpec::new(warm_dir.to_string_lossy()).with_options(ModelOptions::default().with_device(DeviceSpec::Cuda(0)).with_dtype(dtype));
        let warm = DenseEmbeddingService::from_spec(spec).await.unwrap();
        warm.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
        warm.cleanup().await.unwrap();
    }
    for &name in embed_testkit::FIXTURES {
        let dir = embed_testkit::fixture_dir(name);
        let texts: Vec<String> = embed_testkit::fixture_reference(name).into_iter().map(|i| i.text).collect();
        let spec = |device, dtype| ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions::default().with_device(device).with_dtype(dtype));
        let cpu = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cpu, DType::F32)).await.unwrap();
        let expected = cpu.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
        cpu.cleanup().await.unwrap();
        let base = cuda_memory(0).unwrap();
        // bf16 keeps 8 bits of mantissa: on CPU these deliberately sensitive fixtures reach
        // 0.9999 only for the BERT-shaped ones (tests/it/families.rs), so bf16 gets the CPU test's
        // bounds; f16 (11 bits) must reach 0.9999 everywhere.
        let bf16_min = embed_testkit::fixture_bf16_min_cosine(name);
        for (dtype, min_cos) in [(DType::F32, 0.99999), (DType::Bf16, bf16_min), (DType::F16, 0.9999)] {
            let svc = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cuda(0), dtype)).await.unwrap();
            let got = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
            assert_eq!(got.token_counts, expected.token_counts, "{name} {dtype}");
            let worst = assert_cosines(&format!("{name} {dtype} on CUDA vs CPU f32"), &got.vectors, &expected.vectors, min_cos);
            svc.cleanup().await.unwrap();
            let after = cuda_memory(0).unwrap();
            assert_eq!(after.allocated, base.allocated, "{name} {dtype}: allocated bytes back to the baseline exactly");
            eprintln!("{name:>12} {dtype}: worst cosine vs CPU f32 {worst:.6}");
        }
    }
    assert_eq!(live_models(), 0);
}

/// The Qwen3-Embedding-0.6B-shaped random model (`bench/decoder_shape.py make`, written by
/// `scripts/gpu-check.sh run` into `EMBED_DECODER_SHAPED_DIR`): with no dtype asked for it runs
/// in bf16 on CUDA (`DType::preferred`), close to CPU f32 on short texts and on one
/// 4096-token input, and cleanup returns the allocator's bytes exactly.
#[tokio::test]
#[ignore = "needs a CUDA GPU and EMBED_DECODER_SHAPED_DIR; run by scripts/gpu-check.sh run"]
async fn decoder_0_6b_shaped_defaults_to_bf16_on_cuda_close_to_cpu_f32() {
    require_cuda();
    let dir = std::env::var("EMBED_DECODER_SHAPED_DIR").expect("EMBED_DECODER_SHAPED_DIR: the model bench/decoder_shape.py make writes");
    let mut inputs: Vec<String> = texts();
    inputs.push("a long document about retrieval, embeddings and memory. ".repeat(600));
    let spec = |device, dtype| {
        ModelSpec::new(dir.as_str()).with_options({
            let mut options = ModelOptions::default().with_device(device).with_max_seq_length(4096);
            options.dtype = dtype;
            options
        })
    };
    let cpu = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cpu, Some(DType::F32))).await.unwrap();
    let expected = cpu.embed_texts(&inputs, &EmbedOptions::default()).await.unwrap();
    cpu.cleanup().await.unwrap();
    assert_eq!(*expected.token_counts.last().unwrap(), 4096, "the long input fills the 4096-token limit");

    let base = cuda_memory(0).unwrap();
    let svc = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cuda(0), None)).await.unwrap();
    let info = svc.info().unwrap();
    assert_eq!(info.dtype, DType::Bf16, "decoders default to bf16 on CUDA");
    assert_eq!(info.weight_bytes, 2 * 595_776_512, "596 M parameters in bf16");
    let t = std::time::Instant::now();
    let got = svc.embed_texts(&inputs, &EmbedOptions::default()).await.unwrap();
    let seconds = t.elapsed().as_secs_f64();
    assert_eq!(got.token_counts, expected.token_counts);
    let worst = assert_cosines("0.6B-shaped bf16 on CUDA vs CPU f32", &got.vectors, &expected.vectors, 0.999);
    let during = cuda_memory(0).unwrap();
    svc.cleanup().await.unwrap();
    let after = cuda_memory(0).unwrap();
    assert_eq!(after.allocated, base.allocated, "allocated bytes back to the baseline exactly");
    eprintln!(
        "0.6B-shaped bf16 on CUDA: worst cosine vs CPU f32 {worst:.6}; {} inputs ({} tokens) in {seconds:.3} s; allocated {} -> {} -> {}",
        inputs.len(),
        got.total_tokens(),
        base.allocated,
        during.allocated,
        after.allocated
    );
}

/// The warm tier's core on a GPU: a BERT-large-shaped model (24 layers, hidden 1024, 1.2 GB in
/// f32) offloaded to pinned host memory and restored 20 times. Vectors are bitwise the same
/// after every restore; after every offload the caching allocator's allocated bytes are back
/// to the level with no model (exactly the same each time); the pinned host memory holds the
/// copy while offloaded and goes back to its baseline once the model is released. Prints the
/// median restore time beside the cold load; the goal is a restore under 25 % of a load.
#[tokio::test]
#[ignore = "needs a CUDA GPU; run with EMBED_TEST_CUDA=1 cargo test -p embed-core --test cuda -- --ignored"]
async fn bert_large_shaped_offloads_and_restores_20_times_exactly() {
    require_cuda();
    let large = TinyModel { hidden: 1024, layers: 24, heads: 16, intermediate: 4096, max_positions: 512, ..Default::default() };
    let (_tmp, dir) = large.write_temp();
    let spec = ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions::default().with_device(DeviceSpec::Cuda(0)).with_dtype(DType::F32));
    // Warm-up (CUDA context, cuBLAS workspace), then the baselines.
    let warm = DenseEmbeddingService::from_spec(spec.clone()).await.unwrap();
    warm.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap();
    warm.cleanup().await.unwrap();
    embed_core::memory::empty_pinned_host_cache().unwrap();
    let base = cuda_memory(0).unwrap().allocated;
    let pinned_base = embed_core::memory::pinned_host_memory().unwrap();

    let started = std::time::Instant::now();
    let svc = DenseEmbeddingService::from_spec(spec).await.unwrap();
    let cold_load = started.elapsed();
    let weights = svc.info().unwrap().weight_bytes;
    assert!(weights > 1_000_000_000, "BERT-large-shaped: {weights} weight bytes");
    let expected = svc.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap().vectors;
    let mut restores = Vec::new();
    for cycle in 0..20 {
        let off = svc.offload().await.unwrap();
        assert_eq!(off.tensor_bytes, weights);
        let offloaded = cuda_memory(0).unwrap();
        assert_eq!(offloaded.allocated, base, "cycle {cycle}: allocated bytes back to the no-model level after the offload");
        let (active, _) = embed_core::memory::pinned_host_memory().unwrap();
        assert!(active >= off.host_bytes, "cycle {cycle}: pinned memory {active} holds the {}-byte copy", off.host_bytes);
        let back = svc.restore().await.unwrap();
        restores.push(back.duration);
        let got = svc.embed_texts(&texts(), &EmbedOptions::default()).await.unwrap().vectors;
        assert_eq!(got, expected, "cycle {cycle}: vectors after the restore are bitwise the same");
    }
    svc.offload().await.unwrap();
    svc.cleanup().await.unwrap();
    assert_eq!(cuda_memory(0).unwrap().allocated, base, "released: allocated back to the baseline");
    assert_eq!(embed_core::memory::pinned_host_memory().unwrap(), pinned_base, "released: pinned host memory (active, held) back to the baseline");
    assert_eq!(embed_core::memory::offloaded_host_bytes(), 0);
    restores.sort();
    let median = restores[restores.len() / 2];
    let ratio = median.as_secs_f64() / cold_load.as_secs_f64();
    eprintln!(
        "BERT-large-shaped f32 on cuda:0, {weights} weight bytes: cold load {:.1} ms, restore median {:.1} ms (min {:.1}, max {:.1}), restore/load {:.3}",
        cold_load.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        restores[0].as_secs_f64() * 1e3,
        restores[restores.len() - 1].as_secs_f64() * 1e3,
        ratio
    );
    assert!(ratio <= 0.25, "a restore takes {ratio:.3} of a cold load (goal: at most 0.25)");
}

/// The decoder-reranker fixtures (a causal Qwen3-Reranker served by `llm_reranker`, and its
/// seq-cls conversion) on CUDA in f32 and bf16 against CPU f32 logits, the allocator's bytes back
/// to the baseline exactly after each.
#[tokio::test]
#[ignore = "needs a CUDA GPU; run with EMBED_TEST_CUDA=1 cargo test -p embed-core --test cuda -- --ignored"]
async fn llm_rerankers_on_cuda_match_cpu_and_release_exactly() {
    require_cuda();
    let path = embed_testkit::fixture_dir("qwen3-reranker").join("reference.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let pairs: Vec<embed_core::ClassifyInput> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["instruction"].is_null())
        .map(|i| embed_core::ClassifyInput::Pair(i["query"].as_str().unwrap().into(), i["text"].as_str().unwrap().into()))
        .collect();
    assert!(pairs.len() >= 40, "{} pairs", pairs.len());
    for name in ["qwen3-reranker", "qwen3-reranker-seq-cls"] {
        let dir = embed_testkit::fixture_dir(name);
        let llm_reranker = (name == "qwen3-reranker").then(embed_core::LlmReranker::qwen3);
        let spec = |device, dtype| {
            let mut options = ModelOptions::default().with_device(device).with_dtype(dtype);
            options.llm_reranker = llm_reranker.clone();
            ModelSpec::new(dir.to_string_lossy()).with_options(options)
        };
        let logits = |c: embed_core::Classified| c.logits.into_iter().map(|r| r[0]).collect::<Vec<f32>>();
        let cpu = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cpu, DType::F32)).await.unwrap();
        let expected = logits(cpu.classify(&pairs, &EmbedOptions::default()).await.unwrap());
        cpu.cleanup().await.unwrap();
        // Warm-up (CUDA context, cuBLAS handles and workspaces) in both dtypes, then the baseline.
        for dtype in [DType::F32, DType::Bf16] {
            let warm = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cuda(0), dtype)).await.unwrap();
            warm.classify(&pairs, &EmbedOptions::default()).await.unwrap();
            warm.cleanup().await.unwrap();
        }
        let base = cuda_memory(0).unwrap();
        // CPU bf16 is within 1.4e-2 of CPU f32 on these logits (tests/it/llm_rerankers.rs).
        for (dtype, max) in [(DType::F32, 1e-3f32), (DType::Bf16, 0.05)] {
            let svc = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cuda(0), dtype)).await.unwrap();
            let got = logits(svc.classify(&pairs, &EmbedOptions::default()).await.unwrap());
            assert_eq!(got.len(), expected.len(), "{name} {dtype}");
            let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, |w, d| if d.is_nan() || w.is_nan() { f32::NAN } else { w.max(d) });
            assert!(worst <= max, "{name} {dtype}: worst logit difference to CPU f32 {worst} (allowed {max})");
            svc.cleanup().await.unwrap();
            let after = cuda_memory(0).unwrap();
            assert_eq!(after.allocated, base.allocated, "{name} {dtype}: allocated bytes back to the baseline exactly");
            eprintln!("{name:>24} {dtype}: worst logit difference vs CPU f32 {worst:.2e}");
        }
    }
    assert_eq!(live_models(), 0);
}

/// The multi-vector kinds (BGE-M3's three heads, a PyLate ColBERT) on CUDA in f32 and bf16
/// against CPU f32: dense vectors, lexical weights (the same token ids) and token vectors per
/// text, the allocator's bytes back to the baseline exactly after each.
#[tokio::test]
#[ignore = "needs a CUDA GPU; run with EMBED_TEST_CUDA=1 cargo test -p embed-core --test cuda -- --ignored"]
async fn multi_vector_models_on_cuda_match_cpu_and_release_exactly() {
    require_cuda();
    let texts: Vec<String> = (0..12).map(|i| format!("late interaction scores every token {i} of ").repeat(1 + i % 4)).collect();
    for name in ["xlm-roberta-m3", "bert-colbert"] {
        let dir = embed_testkit::fixture_dir(name);
        let spec = |device, dtype| ModelSpec::new(dir.to_string_lossy()).with_options(ModelOptions::default().with_device(device).with_dtype(dtype));
        let cpu = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cpu, DType::F32)).await.unwrap();
        let want_multi = cpu.embed_multi(&texts, &EmbedOptions::default()).await.unwrap().vectors;
        let m3 = name == "xlm-roberta-m3";
        let want_dense = if m3 { Some(cpu.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors) } else { None };
        let want_sparse = if m3 { Some(cpu.embed_sparse(&texts, &EmbedOptions::default()).await.unwrap().vectors) } else { None };
        cpu.cleanup().await.unwrap();
        for dtype in [DType::F32, DType::Bf16] {
            let warm = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cuda(0), dtype)).await.unwrap();
            warm.embed_multi(&texts, &EmbedOptions::default()).await.unwrap();
            warm.cleanup().await.unwrap();
        }
        let base = cuda_memory(0).unwrap();
        for (dtype, min_cos) in [(DType::F32, 0.99999), (DType::Bf16, 0.99)] {
            let svc = DenseEmbeddingService::from_spec(spec(DeviceSpec::Cuda(0), dtype)).await.unwrap();
            let got = svc.embed_multi(&texts, &EmbedOptions::default()).await.unwrap().vectors;
            assert_eq!(got.len(), want_multi.len(), "{name} {dtype}: texts");
            let mut compared = 0;
            for (i, (g, w)) in got.iter().zip(&want_multi).enumerate() {
                assert_eq!(g.len(), w.len(), "{name} {dtype}: text {i}'s token vectors");
                assert_cosines(&format!("{name} {dtype} on CUDA, text {i}'s token vectors vs CPU f32"), g, w, min_cos);
                compared += g.len();
            }
            assert!(compared > 0, "{name}: no token vectors compared");
            if let (Some(dense), Some(sparse)) = (&want_dense, &want_sparse) {
                let got_dense = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors;
                assert_cosines(&format!("{name} {dtype} dense on CUDA vs CPU f32"), &got_dense, dense, min_cos);
                let got_sparse = svc.embed_sparse(&texts, &EmbedOptions::default()).await.unwrap().vectors;
                assert_eq!(got_sparse.len(), sparse.len(), "{name} {dtype}: sparse texts");
                if dtype == DType::F32 {
                    for (i, (g, w)) in got_sparse.iter().zip(sparse).enumerate() {
                        assert_eq!(g.indices, w.indices, "{name} f32: text {i}'s lexical token ids");
                        let worst = g.values.iter().zip(&w.values).map(|(a, b)| (a - b).abs()).fold(0.0f32, |m, d| if d.is_nan() || m.is_nan() { f32::NAN } else { m.max(d) });
                        assert!(worst <= 1e-4, "{name} f32: text {i}'s lexical weights differ by {worst}");
                    }
                }
            }
            svc.cleanup().await.unwrap();
            let after = cuda_memory(0).unwrap();
            assert_eq!(after.allocated, base.allocated, "{name} {dtype}: allocated bytes back to the baseline exactly");
        }
    }
    assert_eq!(live_models(), 0);
}
