//! oneDNN prepacking of CPU bf16 models (`ModelOptions::cpu_prepack`): on by default in bf16 on
//! the CPU, off in f32 and when asked; the prepacked forward (no weight reorder per call, GELU
//! fused into the matmul) gives what the plain bf16 forward gives, within bf16's rounding, for
//! every family and head; the weights it freed are not counted twice and all come back.

use embed_core::memory::live_weight_bytes;
use embed_core::{DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelOptions, ModelSpec};
use embed_testkit::{assert_cosines, fixture_dir, fixture_reference, serial, FIXTURES};

async fn load(name: &str, dtype: DType, prepack: Option<bool>) -> DenseEmbeddingService {
    let options = ModelOptions { dtype: Some(dtype), cpu_prepack: prepack, ..Default::default() };
    DenseEmbeddingService::from_spec(ModelSpec::new(fixture_dir(name).to_string_lossy()).with_options(options)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepacked_bf16_matches_plain_bf16_for_every_family() {
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
