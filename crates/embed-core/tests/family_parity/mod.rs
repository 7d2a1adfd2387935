//! The check every family must pass against sentence-transformers, shared by the test binaries
//! that run it under each CPU attention mode (`EMBED_CPU_ATTENTION`, read once per process).

use embed_core::{BatchStats, DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelOptions, ModelSpec};
use embed_testkit::{assert_cosines, fixture_dir, fixture_model_type_and_family, fixture_query_reference, fixture_reference, FIXTURES};

pub(crate) async fn load(name: &str, dtype: DType) -> DenseEmbeddingService {
    let spec = ModelSpec::new(fixture_dir(name).to_string_lossy()).with_options(ModelOptions::default().with_dtype(dtype).with_tuning(embed_core::Tuning::from_env()));
    DenseEmbeddingService::from_spec(spec).await.unwrap_or_else(|e| panic!("{name}: load failed: {e}"))
}

/// The attention the CPU ran for a family under this process's `EMBED_CPU_ATTENTION`: by
/// default the variable-length kernel for every family (key masks, sliding windows, MPNet's
/// distance bias, the decoders' causal and grouped-query heads); `grouped`, length groups for
/// the encoders and padded batches for the decoders; `padded`, padded batches for all.
fn assert_cpu_attention_ran(name: &str, family: &str, stats: &BatchStats) {
    let mode = std::env::var("EMBED_CPU_ATTENTION").unwrap_or_default();
    let decoder = family == "decoder" || family == "gemma3";
    let (varlen, grouped) = match mode.as_str() {
        "grouped" => (false, !decoder),
        "padded" => (false, false),
        _ => (true, false),
    };
    let ran = (stats.varlen_attention_batches > 0, stats.length_grouped_batches > 0);
    assert_eq!(ran, (varlen, grouped), "{name} ({family}) under EMBED_CPU_ATTENTION={mode:?}: (variable-length batches, length-grouped batches) ran");
}

/// Every fixture, f32 on the CPU: the reference embeddings (worst cosine >= 0.99999) and token
/// counts, in one mixed call and text by text, the same vector either way (<= 1e-5), and the
/// query prompt where the model has one.
pub(crate) async fn every_family_matches_sentence_transformers() {
    let mut prompted = 0;
    for &name in FIXTURES {
        let svc = load(name, DType::F32).await;
        let info = svc.info().unwrap();
        let (model_type, family) = fixture_model_type_and_family(name);
        assert_eq!((info.architecture.as_str(), info.family.to_string().as_str()), (model_type, family), "{name}");
        let items = fixture_reference(name);
        assert!(items.len() >= 40, "{name}: {} reference texts", items.len());
        assert_eq!(info.dimension, items[0].embedding.len(), "{name}: dimension");
        let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
        let expected: Vec<Vec<f32>> = items.iter().map(|i| i.embedding.clone()).collect();
        let counts: Vec<usize> = items.iter().map(|i| i.token_count).collect();

        // All texts in one call: length-sorted mixed batches with padding.
        let out = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
        assert_eq!(out.token_counts, counts, "{name}: token counts");
        let worst = assert_cosines(&format!("{name} (batched) vs sentence-transformers"), &out.vectors, &expected, 0.99999);
        assert_cpu_attention_ran(name, family, &svc.batch_stats().unwrap());

        // Every text alone: no padding at all.
        let mut alone = Vec::with_capacity(texts.len());
        for t in &texts {
            alone.push(svc.embed_texts(std::slice::from_ref(t), &EmbedOptions::default()).await.unwrap().vectors.remove(0));
        }
        let worst_alone = assert_cosines(&format!("{name} (one by one) vs sentence-transformers"), &alone, &expected, 0.99999);
        // Padding must not change a vector (batch invariance).
        for (i, (a, b)) in alone.iter().zip(&out.vectors).enumerate() {
            let d = embed_testkit::max_abs_diff(a, b);
            assert!(d <= 1e-5, "{name}: text {i} alone vs in the mixed batch differ by {d}");
        }
        eprintln!("{name:>12}: worst cosine batched {worst:.8}, alone {worst_alone:.8}");

        // Queries with the model's query prompt (decoder embedders' instructions). Every decoder
        // has one and its fixture must carry prompted query items: the check cannot drop out
        // because a fixture lost them or a prompt stopped being read.
        let decoder = family == "decoder" || family == "gemma3";
        let query_prompt = info.prompts.get("query").filter(|p| !p.is_empty());
        assert_eq!(query_prompt.is_some(), decoder, "{name} ({family}): a non-empty query prompt iff a decoder; prompts {:?}", info.prompts);
        let queries = fixture_query_reference(name);
        assert_eq!(!queries.is_empty(), query_prompt.is_some(), "{name}: {} prompted query items in the reference, query prompt {query_prompt:?}", queries.len());
        if query_prompt.is_some() {
            prompted += 1;
            let texts: Vec<String> = queries.iter().map(|i| i.text.clone()).collect();
            let out = svc.embed_texts(&texts, &EmbedOptions::query()).await.unwrap();
            assert_eq!(out.token_counts, queries.iter().map(|i| i.token_count).collect::<Vec<_>>(), "{name}: query token counts");
            let expected: Vec<Vec<f32>> = queries.iter().map(|i| i.embedding.clone()).collect();
            let worst = assert_cosines(&format!("{name} queries (prompted) vs sentence-transformers"), &out.vectors, &expected, 0.99999);
            eprintln!("{name:>12}: queries with the query prompt, worst cosine {worst:.8}");
        }
        svc.cleanup().await.unwrap();
    }
    let decoders = FIXTURES.iter().filter(|n| matches!(fixture_model_type_and_family(n).1, "decoder" | "gemma3")).count();
    assert!(decoders >= 5, "the decoder fixtures (qwen3, qwen2, qwen2-bidirectional, mistral, gemma3): {decoders}");
    assert_eq!(prompted, decoders, "every decoder's prompted queries were checked");
}

