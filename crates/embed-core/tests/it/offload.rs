//! Offloading a model's weights to host memory and restoring them, on the CPU (the same code
//! path as on CUDA, where the host copy is pinned; `cuda.rs` has the GPU proofs): every family
//! and task head moves every weight byte (the copy covers `weight_bytes` exactly), vectors are
//! bitwise identical after a restore, a request to an offloaded model restores it, and
//! cleanup of an offloaded model frees the host copy.

use embed_core::memory::{live_models, live_weight_bytes, offloaded_host_bytes};
use embed_core::{ClassifyInput, DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelKind, ModelOptions, ModelSpec, Residency, Offload, RetrievalTasks};
use embed_testkit::{fixture_dir, fixture_reference, serial, task_reference, FIXTURES, TASK_FIXTURES};

const CHUNK: u64 = 64 << 20;

/// Loads `name` in `dtype` on the CPU, without oneDNN prepacking (a prepacked model does not
/// offload; `a_prepacked_cpu_model_refuses_to_offload_and_keeps_serving` checks that).
async fn load(name: &str, dtype: DType) -> DenseEmbeddingService {
    let spec = ModelSpec::new(fixture_dir(name).to_string_lossy())
        .named(name)
        .with_options(ModelOptions::default().with_dtype(dtype).with_cpu_prepack(false));
    DenseEmbeddingService::from_spec(spec).await.unwrap_or_else(|e| panic!("{name}: load failed: {e}"))
}

/// What the model computes for a few inputs, whatever its kind: the rows as bits.
async fn outputs(svc: &DenseEmbeddingService, name: &str) -> Vec<Vec<u32>> {
    let o = EmbedOptions::default();
    let rows = match svc.info().unwrap().kind {
        ModelKind::Embedding => {
            let texts: Vec<String> = fixture_reference(name).into_iter().take(12).map(|i| i.text).collect();
            svc.embed_texts(&texts, &o).await.unwrap().vectors
        }
        ModelKind::MultiVector => {
            let texts = vec!["late interaction".to_string(), "token vectors".to_string()];
            svc.embed_multi(&texts, &o).await.unwrap().vectors.concat()
        }
        ModelKind::Sparse => {
            let texts: Vec<String> = task_reference(name).into_iter().take(8).map(|i| i.text).collect();
            svc.embed_sparse(&texts, &o).await.unwrap().vectors.into_iter().map(|v| v.values).collect()
        }
        ModelKind::Reranker | ModelKind::Classifier => {
            let inputs: Vec<ClassifyInput> = task_reference(name)
                .into_iter()
                .take(8)
                .map(|i| match i.query {
                    Some(q) => ClassifyInput::Pair(q, i.text),
                    None => ClassifyInput::Text(i.text),
                })
                .collect();
            svc.classify(&inputs, &o).await.unwrap().logits
        }
    };
    rows.into_iter().map(|r| r.into_iter().map(f32::to_bits).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_and_head_moves_every_weight_byte_and_comes_back_bitwise() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    for &name in FIXTURES.iter().chain(TASK_FIXTURES) {
        for dtype in [DType::F32, DType::Bf16] {
            let svc = load(name, dtype).await;
            let info = svc.info().unwrap();
            let before = outputs(&svc, name).await;
            assert_eq!(svc.residency(), Some(Residency::Device));

            let off = svc.offload().await.unwrap();
            assert!(off.moved && off.residency == Residency::Host, "{name}: {off:?}");
            // The copy covers the weights exactly: a tensor the model holds but does not list
            // would be missing here (and would stay on the device).
            assert_eq!(off.tensor_bytes, info.weight_bytes, "{name} {dtype}: bytes copied vs weight bytes");
            assert!(off.host_bytes >= off.tensor_bytes && off.host_bytes < off.tensor_bytes + CHUNK, "{name}: {off:?}");
            assert_eq!(offloaded_host_bytes(), off.host_bytes, "{name}: host copy counted");
            assert_eq!(svc.residency(), Some(Residency::Host));
            let again = svc.offload().await.unwrap();
            assert!(!again.moved && again.residency == Residency::Host, "{name}: a second offload is a no-op");

            let back = svc.restore().await.unwrap();
            assert!(back.moved && back.residency == Residency::Device && back.tensor_bytes == info.weight_bytes, "{name}: {back:?}");
            assert_eq!(offloaded_host_bytes(), 0, "{name}: host copy freed on restore");
            assert_eq!(outputs(&svc, name).await, before, "{name} {dtype}: outputs after a restore");
            assert!(!svc.restore().await.unwrap().moved, "{name}: restoring a model on its device is a no-op");

            // A request to an offloaded model restores it first.
            svc.offload().await.unwrap();
            assert_eq!(outputs(&svc, name).await, before, "{name} {dtype}: outputs of a request that restored the model");
            assert_eq!(svc.residency(), Some(Residency::Device));
            let stats = svc.batch_stats().unwrap();
            assert_eq!((stats.offloads, stats.restores, stats.auto_restores), (2, 2, 1), "{name}");

            // Released while offloaded: the host copy goes too.
            svc.offload().await.unwrap();
            let report = svc.cleanup().await.unwrap();
            assert_eq!(report.model_weight_bytes, info.weight_bytes);
            assert_eq!((offloaded_host_bytes(), live_weight_bytes(), live_models()), (0, 0, 0), "{name}: released");
        }
    }
}

/// Requests and offloads race; every request gets the vectors it would have got alone. The model
/// starts offloaded, so the first request's round must restore it (`auto_restores`); the
/// offloads racing after that move it back and forth, and every move is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_offloads_all_get_the_same_vectors() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let svc = std::sync::Arc::new(load("bert", DType::F32).await);
    let texts: Vec<String> = fixture_reference("bert").into_iter().map(|i| i.text).collect();
    let expected = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors;
    let before = svc.batch_stats().unwrap();
    assert!(svc.offload().await.unwrap().moved);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (svc, texts) = (svc.clone(), texts.clone());
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                svc.offload().await.map(|m| Err(m.moved))
            } else {
                svc.embed_texts(&texts[i..i + 8], &EmbedOptions::default()).await.map(|e| Ok((i, e.vectors)))
            }
        }));
    }
    let (mut answered, mut moved_offloads) = (0, 0);
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Ok((i, vectors)) => {
                answered += 1;
                // Batches form differently than in the one-call reference, so compare as the
                // batching tests do (batch invariance within 1e-5), not bitwise.
                for (k, v) in vectors.iter().enumerate() {
                    let d = embed_testkit::max_abs_diff(v, &expected[i + k]);
                    assert!(d <= 1e-5, "text {} after racing offloads differs by {d}", i + k);
                }
            }
            Err(moved) => moved_offloads += u64::from(moved),
        }
    }
    assert_eq!(answered, 16);
    let stats = svc.batch_stats().unwrap();
    let (offloads, restores, auto) =
        (stats.offloads - before.offloads, stats.restores - before.restores, stats.auto_restores - before.auto_restores);
    // Requests made the only restores, each counted once, and every offload that moved counted.
    assert!(auto >= 1, "no request restored the offloaded model: {stats:?}");
    assert_eq!(restores, auto, "restores other than the requests' own: {stats:?}");
    assert_eq!(offloads, 1 + moved_offloads, "{stats:?}");
    let on_host = u64::from(svc.residency() == Some(Residency::Host));
    assert_eq!(offloads, restores + on_host, "offloads and restores alternate: {stats:?}");
    svc.cleanup().await.unwrap();
    assert_eq!((offloaded_host_bytes(), live_weight_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(embed_cpu_bf16_prepack), ignore = "oneDNN bf16 prepacking needs AVX-512 BW/VL/DQ, which the CPU that built these tests lacks")]
async fn a_prepacked_cpu_model_refuses_to_offload_and_keeps_serving() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let spec = ModelSpec::new(fixture_dir("bert").to_string_lossy()).with_options(ModelOptions::default().with_dtype(DType::Bf16));
    let svc = DenseEmbeddingService::from_spec(spec).await.unwrap();
    let texts: Vec<String> = fixture_reference("bert").into_iter().take(4).map(|i| i.text).collect();
    let before = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors;
    match svc.offload().await {
        Err(embed_core::Error::InvalidOption { name: "cpu_prepack", reason }) => assert!(reason.contains("prepacked"), "{reason}"),
        other => panic!("expected a cpu_prepack error, got {other:?}"),
    }
    assert_eq!(svc.residency(), Some(Residency::Device));
    assert_eq!(svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors, before);
    svc.cleanup().await.unwrap();
    assert_eq!((offloaded_host_bytes(), live_weight_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_a_model_cannot_move_it() {
    let _gate = embed_testkit::module_gate(module_path!());
    let svc = DenseEmbeddingService::new();
    assert!(svc.offload().await.is_err());
    assert!(svc.restore().await.is_err());
    assert_eq!(svc.residency(), None);
}
