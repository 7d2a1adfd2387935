//! oneDNN prepacking of CPU bf16 models (`ModelOptions::cpu_prepack`): on by default in bf16 on
//! a CPU that can (AVX-512 BW/VL/DQ), off in f32, when asked, and by default on a CPU that
//! cannot (where asking for it is refused); the prepacked forward (no weight reorder per call, GELU
//! fused into the matmul) gives what the plain bf16 forward gives, within bf16's rounding, for
//! every family and head; the weights it freed are not counted twice and all come back.

use embed_core::memory::live_weight_bytes;
use embed_core::{DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, Error, ModelOptions, ModelSpec};
use embed_testkit::{assert_cosines, fixture_dir, fixture_reference, serial, FIXTURES};

async fn load(name: &str, dtype: DType, prepack: Option<bool>) -> DenseEmbeddingService {
    let mut options = ModelOptions::default().with_dtype(dtype);
    options.cpu_prepack = prepack;
    DenseEmbeddingService::from_spec(ModelSpec::new(fixture_dir(name).to_string_lossy()).with_options(options)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(embed_cpu_bf16_prepack), ignore = "oneDNN bf16 prepacking needs AVX-512 BW/VL/DQ, which the CPU that built these tests lacks")]
async fn prepacked_bf16_matches_plain_bf16_for_every_family() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    for &name in FIXTURES {
        let texts: Vec<String> = fixture_reference(name).into_iter().map(|i| i.text).collect();
        let plain = load(name, DType::Bf16, Some(false)).await;
        assert!(!plain.info().unwrap().cpu_prepacked);
        let expected = plain.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors;
        plain.cleanup().await.unwrap();
        let packed = load(name, DType::Bf16, None).await;
        assert!(packed.info().unwrap().cpu_prepacked, "{name}: bf16 on the CPU prepacks by default");
        let got = packed.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors;
        let worst = assert_cosines(&format!("{name}: prepacked vs plain bf16"), &got, &expected, 0.9995);
        eprintln!("{name:>20}: prepacked vs plain bf16, worst cosine {worst:.6}");
        packed.cleanup().await.unwrap();
        assert_eq!(live_weight_bytes(), 0);
    }
    let f32 = load("bert", DType::F32, None).await;
    assert!(!f32.info().unwrap().cpu_prepacked, "f32 is not prepacked");
    f32.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bf16_prepacks_by_default_where_the_cpu_can_and_asking_where_it_cannot_is_refused() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let texts: Vec<String> = fixture_reference("bert").into_iter().map(|i| i.text).collect();
    let f32 = load("bert", DType::F32, None).await;
    let reference = f32.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors;
    f32.cleanup().await.unwrap();
    let by_default = load("bert", DType::Bf16, None).await;
    let can = embed_core::cpu_prepack_unsupported_reason().is_none();
    assert_eq!(by_default.info().unwrap().cpu_prepacked, can, "bf16's default prepacks exactly where the CPU can");
    let got = by_default.embed_texts(&texts, &EmbedOptions::default()).await.unwrap().vectors;
    by_default.cleanup().await.unwrap();
    assert_cosines("bf16 by default vs f32", &got, &reference, 0.99);
    let options = ModelOptions::default().with_dtype(DType::Bf16).with_cpu_prepack(true);
    let asked = DenseEmbeddingService::from_spec(ModelSpec::new(fixture_dir("bert").to_string_lossy()).with_options(options)).await;
    match (can, asked) {
        (true, Ok(svc)) => {
            assert!(svc.info().unwrap().cpu_prepacked);
            svc.cleanup().await.unwrap();
        }
        (false, Err(Error::InvalidOption { name: "cpu_prepack", reason })) => assert!(reason.contains("AVX-512"), "{reason}"),
        (can, other) => panic!("cpu_prepack asked for, CPU able: {can}: {:?}", other.map(|s| s.info().map(|i| i.cpu_prepacked))),
    }
    assert_eq!(live_weight_bytes(), 0);
}
