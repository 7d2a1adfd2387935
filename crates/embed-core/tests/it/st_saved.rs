//! A directory written by sentence-transformers 6's own `SentenceTransformer.save`
//! (`python/make_st_saved_fixture.py`: the mpnet fixture saved back), as a user who saves a model
//! writes it: the 6.x module paths in modules.json, `1_Pooling/config.json` as
//! `{"embedding_dimension", "pooling_mode", "include_prompt"}`, a `2_Normalize` folder, the
//! length limit only in tokenizer_config.json, no special_tokens_map.json. It loads and embeds
//! as sentence-transformers does.

use embed_core::{DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelOptions, ModelSpec, Pooling};
use embed_testkit::{assert_cosines, fixture_dir, reference_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_saved_by_sentence_transformers_6_loads_and_matches_it() {
    let _gate = embed_testkit::module_gate(module_path!());
    let dir = fixture_dir("mpnet-st-saved");
    // The fixture really is in the 6.x format (else this test would test the old one again).
    let pooling: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("1_Pooling/config.json")).unwrap()).unwrap();
    assert_eq!(pooling["pooling_mode"], "mean", "{pooling}");
    assert!(pooling.get("pooling_mode_mean_tokens").is_none(), "{pooling}");
    let modules = std::fs::read_to_string(dir.join("modules.json")).unwrap();
    assert!(modules.contains("sentence_transformers.sentence_transformer.modules.pooling.Pooling"), "{modules}");
    assert!(!dir.join("special_tokens_map.json").exists());
    let sbert: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("sentence_bert_config.json")).unwrap()).unwrap();
    assert!(sbert.get("max_seq_length").is_none(), "{sbert}");

    let options = ModelOptions::default().with_dtype(DType::F32);
    let svc = DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy()).with_options(options)).await.unwrap();
    let info = svc.info().unwrap();
    assert_eq!((info.pooling, info.normalize, info.dimension, info.max_seq_length), (Pooling::Mean, true, 32, 96));
    let items = reference_file(&dir.join("reference.json"));
    assert!(items.len() >= 40, "{} reference texts", items.len());
    let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let out = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
    assert_eq!(out.token_counts, items.iter().map(|i| i.token_count).collect::<Vec<_>>(), "token counts");
    let expected: Vec<Vec<f32>> = items.iter().map(|i| i.embedding.clone()).collect();
    let worst = assert_cosines("saved by sentence-transformers 6 vs sentence-transformers", &out.vectors, &expected, 0.99999);
    eprintln!("mpnet-st-saved: worst cosine {worst:.8}");
    svc.cleanup().await.unwrap();
}
