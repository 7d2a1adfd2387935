//! Any input text (unicode, empty, whitespace, control characters, far too long) embeds into a
//! finite vector of the model's dimension, with a token count within the limit, and the same
//! vector alone as inside the request.

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::{strategies, TinyModel};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[test]
fn arbitrary_texts_embed_cleanly() {
    let _gate = embed_testkit::module_gate(module_path!());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_tmp, dir) = TinyModel::default().write_temp();
    let svc = rt.block_on(DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy()))).unwrap();
    let mut runner = TestRunner::new(Config { cases: 48, ..Config::default() });
    runner
        .run(&strategies::texts(6), |texts| {
            let out = rt.block_on(svc.embed_texts(&texts, &EmbedOptions::default())).unwrap();
            prop_assert_eq!(out.vectors.len(), texts.len());
            for (i, v) in out.vectors.iter().enumerate() {
                prop_assert_eq!(v.len(), 32);
                prop_assert!(v.iter().all(|x| x.is_finite()), "non-finite output for {:?}", texts[i]);
                prop_assert!(out.token_counts[i] >= 2 && out.token_counts[i] <= 64);
            }
            if let Some(first) = texts.first() {
                let alone = rt.block_on(svc.embed_texts(std::slice::from_ref(first), &EmbedOptions::default())).unwrap();
                prop_assert!(embed_testkit::max_abs_diff(&alone.vectors[0], &out.vectors[0]) <= 1e-5);
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(svc.cleanup()).unwrap();
}
