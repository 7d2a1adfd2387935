//! Decoder LLMs as rerankers against transformers (`testdata/fixtures/qwen3-reranker` and
//! `qwen3-reranker-seq-cls`, written by `python/make_reranker_fixtures.py`): a random
//! Qwen3-Reranker served as a reranker by `ModelOptions::llm_reranker` must give the scores of
//! the model card's code (each pair alone), and its `Qwen3ForSequenceClassification` conversion,
//! recognised from its config, those of transformers' seq-cls model: logits and scores within
//! 1e-4, the same ranking, token counts and truncation as the reference, whatever shares the
//! batch. The prompt and the answer tokens are settable, the errors name what is wrong, and every
//! weight byte is freed (the C allocator back to its level before the load).

use embed_core::memory::{live_models, live_weight_bytes, model_threads};
use embed_core::{ClassifyInput, DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, Error, Int8Kernel, LlmReranker, ModelKind, ModelOptions, ModelSpec, Priority, Offload, RetrievalTasks};
use embed_testkit::memory::settled_snapshot;
use embed_testkit::{fixture_dir, serial};
use serde_json::Value;

const CAUSAL: &str = "qwen3-reranker";
const SEQ_CLS: &str = "qwen3-reranker-seq-cls";

/// One reference item: the instruction (`None`: the default), query, document, and what the
/// reference gave.
#[derive(Debug, Clone)]
struct Item {
    instruction: Option<String>,
    query: String,
    text: String,
    logit: f32,
    score: f32,
    token_count: usize,
    truncated: bool,
}

fn reference(name: &str) -> (Value, Vec<Item>) {
    let path = fixture_dir(name).join("reference.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let items = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|it| {
            let logits = it["logits"].as_array().expect("logits");
            assert_eq!(logits.len(), 1, "{name}: one logit per item");
            Item {
                instruction: it["instruction"].as_str().map(String::from),
                query: it["query"].as_str().expect("query").into(),
                text: it["text"].as_str().expect("text").into(),
                logit: logits[0].as_f64().expect("logit") as f32,
                score: it["score"].as_f64().expect("score") as f32,
                token_count: it["token_count"].as_u64().expect("token_count") as usize,
                truncated: it["truncated"].as_bool().expect("truncated"),
            }
        })
        .collect();
    (v, items)
}

/// The options that serve fixture `name`: the causal LM needs `llm_reranker`, the seq-cls
/// conversion is recognised without it.
fn options(name: &str) -> ModelOptions {
    let mut options = ModelOptions::default();
    options.llm_reranker = (name == CAUSAL).then(LlmReranker::qwen3);
    options
}

async fn load_with(name: &str, options: ModelOptions) -> embed_core::Result<DenseEmbeddingService> {
    DenseEmbeddingService::from_spec(ModelSpec::new(fixture_dir(name).to_string_lossy()).named(name).with_options(options)).await
}

async fn load(name: &str) -> DenseEmbeddingService {
    load_with(name, options(name)).await.unwrap_or_else(|e| panic!("{name}: load failed: {e}"))
}

/// Items grouped by (instruction, query), in first-seen order: one rerank call each.
fn groups(items: &[Item]) -> Vec<Vec<&Item>> {
    let mut out: Vec<Vec<&Item>> = Vec::new();
    for it in items {
        match out.iter_mut().find(|g| g[0].instruction == it.instruction && g[0].query == it.query) {
            Some(g) => g.push(it),
            None => out.push(vec![it]),
        }
    }
    out
}

/// Indices of `scores` best first (ties by index; `total_cmp`, so a NaN cannot pass unnoticed).
fn ranking(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

/// The worst of `a`'s and `b`'s absolute differences, NaN as soon as one is NaN; lengths must
/// agree.
fn worst_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |w: f32, d| if d.is_nan() || w.is_nan() { f32::NAN } else { w.max(d) })
}

/// Reranks every group of `items` with `svc` (the group's instruction as the option); returns the
/// logits and scores in item order, checking token counts, truncation and the ranking per group.
async fn rerank_all(name: &str, svc: &DenseEmbeddingService, items: &[Item]) -> (Vec<f32>, Vec<f32>) {
    let (mut logits, mut scores) = (Vec::new(), Vec::new());
    let mut order = Vec::new();
    for group in groups(items) {
        let texts: Vec<String> = group.iter().map(|i| i.text.clone()).collect();
        let mut opts = EmbedOptions::default();
        opts.instruction = group[0].instruction.clone();
        let out = svc.rerank(&group[0].query, &texts, &opts).await.unwrap();
        let n = group.len();
        assert_eq!((out.logits.len(), out.token_counts.len(), out.truncated.len()), (n, n, n), "{name}: one row per pair");
        assert_eq!(out.token_counts, group.iter().map(|i| i.token_count).collect::<Vec<_>>(), "{name}: {:?}: token counts", group[0].query);
        assert_eq!(out.truncated, group.iter().map(|i| i.truncated).collect::<Vec<_>>(), "{name}: {:?}: truncation", group[0].query);
        let s: Vec<f32> = out.scores().into_iter().map(|r| r[0]).collect();
        let expected: Vec<f32> = group.iter().map(|i| i.score).collect();
        assert_eq!(ranking(&s), ranking(&expected), "{name}: {:?}: ranking {s:?} vs the reference {expected:?}", group[0].query);
        logits.extend(out.logits.iter().map(|r| r[0]));
        scores.extend(s);
        order.extend(group.iter().map(|i| *i as *const Item));
    }
    // Back in item order.
    let at = |p: *const Item| items.iter().position(|i| std::ptr::eq(i, p)).unwrap();
    let mut pairs: Vec<(usize, f32, f32)> = order.into_iter().zip(logits.into_iter().zip(scores)).map(|(p, (l, s))| (at(p), l, s)).collect();
    pairs.sort_by_key(|p| p.0);
    assert_eq!(pairs.iter().map(|p| p.0).collect::<Vec<_>>(), (0..items.len()).collect::<Vec<_>>(), "{name}: every item reranked once");
    (pairs.iter().map(|p| p.1).collect(), pairs.iter().map(|p| p.2).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_forms_match_transformers_and_each_other() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let mut logits_of = Vec::new();
    for name in [CAUSAL, SEQ_CLS] {
        let (meta, items) = reference(name);
        assert!(items.len() >= 40, "{name}: {} reference pairs", items.len());
        let truncated = items.iter().filter(|i| i.truncated).count();
        assert!(truncated >= 3, "{name}: {truncated} truncated pairs");
        assert!(items.iter().any(|i| i.instruction.is_some()) && items.iter().any(|i| i.instruction.is_none()), "{name}: both kinds of items");
        let svc = load(name).await;
        let info = svc.info().unwrap();
        assert_eq!((info.kind, info.dimension, info.normalize), (ModelKind::Reranker, 1, false), "{name}");
        assert_eq!(info.max_seq_length as u64, meta["max_length"].as_u64().unwrap(), "{name}: the tokenizer's limit");
        // Every tensor of the file once; the causal LM's tied head adds its two rows only.
        let file = embed_testkit::safetensors_bytes(&fixture_dir(name).join("model.safetensors"), 4, |_| true);
        let head = if name == CAUSAL { 2 * 64 * 4 } else { 0 };
        assert_eq!(info.weight_bytes, file + head, "{name}: weight bytes");

        let (logits, scores) = rerank_all(name, &svc, &items).await;
        let ref_logits: Vec<f32> = items.iter().map(|i| i.logit).collect();
        let ref_scores: Vec<f32> = items.iter().map(|i| i.score).collect();
        let (dl, ds) = (worst_diff(&logits, &ref_logits), worst_diff(&scores, &ref_scores));
        assert!(dl <= 1e-4 && ds <= 1e-4, "{name}: worst logit difference {dl}, worst score difference {ds}");
        assert_eq!(ranking(&scores), ranking(&ref_scores), "{name}: the ranking of all pairs");

        // The default-instruction pairs in one classify call: padded together, same logits.
        let plain: Vec<&Item> = items.iter().filter(|i| i.instruction.is_none()).collect();
        let pairs: Vec<ClassifyInput> = plain.iter().map(|i| ClassifyInput::Pair(i.query.clone(), i.text.clone())).collect();
        let batched = svc.classify(&pairs, &EmbedOptions::default()).await.unwrap();
        let batched: Vec<f32> = batched.logits.iter().map(|r| r[0]).collect();
        let alone: Vec<f32> = plain.iter().map(|i| i.logit).collect();
        let db = worst_diff(&batched, &alone);
        assert!(db <= 1e-4, "{name}: one padded batch of {} pairs: worst logit difference {db}", plain.len());
        eprintln!(
            "{name}: {} pairs ({truncated} truncated): worst logit difference {dl:.2e}, worst score difference {ds:.2e}; \
             {} pairs in one batch: {db:.2e}",
            items.len(),
            plain.len()
        );
        logits_of.push(logits);
        svc.cleanup().await.unwrap();
    }
    let d = worst_diff(&logits_of[0], &logits_of[1]);
    assert!(d <= 1e-4, "the causal LM and its seq-cls conversion differ by {d}");
    assert_eq!((live_models(), live_weight_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prompt_and_the_answer_tokens_are_settable() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let (_, items) = reference(CAUSAL);
    let group: Vec<&Item> = items.iter().filter(|i| i.instruction.is_none()).take(4).collect();
    let texts: Vec<String> = group.iter().map(|i| i.text.clone()).collect();
    let query = &group[0].query;
    assert!(group.iter().all(|i| i.query == *query), "the first four items share a query");
    let base = load(CAUSAL).await;
    let other = "Judge whether the document is about Python packaging";
    let with = |instruction: Option<&str>| {
        let mut options = EmbedOptions::default();
        options.instruction = instruction.map(String::from);
        options
    };
    let explicit = base.rerank(query, &texts, &with(Some(other))).await.unwrap().logits;
    let default = base.rerank(query, &texts, &with(None)).await.unwrap().logits;
    assert!(worst_diff(&flat(&explicit), &flat(&default)) > 1e-3, "the instruction changes the scores");
    base.cleanup().await.unwrap();

    // The default instruction is the prompt's: a prompt whose default is `other` scores as the
    // explicit instruction did.
    let custom = ModelOptions::default().with_llm_reranker(LlmReranker::qwen3().with_default_instruction(other));
    let svc = load_with(CAUSAL, custom).await.unwrap();
    let got = svc.rerank(query, &texts, &with(None)).await.unwrap().logits;
    assert!(worst_diff(&flat(&got), &flat(&explicit)) <= 1e-6, "default instruction {got:?} vs {explicit:?}");
    svc.cleanup().await.unwrap();
    // The converted form takes the prompt option too (its own row, the same scores).
    let custom = ModelOptions::default().with_llm_reranker(LlmReranker::qwen3().with_default_instruction(other));
    let svc = load_with(SEQ_CLS, custom).await.unwrap();
    let got = svc.rerank(query, &texts, &with(None)).await.unwrap().logits;
    assert!(worst_diff(&flat(&got), &flat(&explicit)) <= 1e-4, "seq-cls, default instruction {got:?} vs {explicit:?}");
    svc.cleanup().await.unwrap();

    // The answer tokens swapped: logit(no) - logit(yes), the reference's negated.
    let swapped = ModelOptions::default().with_llm_reranker(LlmReranker::qwen3().with_answer_tokens("no", "yes"));
    let svc = load_with(CAUSAL, swapped).await.unwrap();
    let got = flat(&svc.rerank(query, &texts, &with(None)).await.unwrap().logits);
    let negated: Vec<f32> = flat(&default).iter().map(|x| -x).collect();
    assert!(worst_diff(&got, &negated) <= 1e-6, "swapped answers {got:?} vs {negated:?}");
    assert_eq!(svc.info().unwrap().labels, vec!["no".to_string()], "the label is the yes token");
    svc.cleanup().await.unwrap();

    // Another prompt: the body with the document first is another text, with other scores, and
    // its token count is the prompt's.
    let reordered = LlmReranker::qwen3().with_prompt(
        LlmReranker::qwen3().prefix,
        "<Document>: {document}\n<Query>: {query}\n<Instruct>: {instruction}",
        LlmReranker::qwen3().suffix,
    );
    let svc = load_with(CAUSAL, ModelOptions::default().with_llm_reranker(reordered)).await.unwrap();
    let out = svc.rerank(query, &texts, &with(None)).await.unwrap();
    assert!(worst_diff(&flat(&out.logits), &flat(&default)) > 1e-3, "a reordered body scores otherwise");
    assert_eq!(out.token_counts.len(), texts.len());
    svc.cleanup().await.unwrap();
    assert_eq!((live_models(), live_weight_bytes()), (0, 0));
}

fn flat(rows: &[Vec<f32>]) -> Vec<f32> {
    rows.iter().map(|r| {
        assert_eq!(r.len(), 1, "one logit per pair");
        r[0]
    }).collect()
}

/// An untied LM head is read from `lm_head.weight` (only its two rows): a copy of the causal
/// fixture whose config unties the head, with `lm_head.weight` the word embeddings with the
/// yes and no rows exchanged, must give the reference logits negated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untied_lm_head_gives_its_own_rows() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let (meta, items) = reference(CAUSAL);
    let src = fixture_dir(CAUSAL);
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut config: Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    config["tie_word_embeddings"] = Value::Bool(false);
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let mut tensors = tch::Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    let word = tensors.iter().find(|(n, _)| n == "model.embed_tokens.weight").unwrap().1.copy();
    let (yes, no) = (meta["yes_token_id"].as_i64().unwrap(), meta["no_token_id"].as_i64().unwrap());
    let head = word.copy();
    head.get(yes).copy_(&word.get(no));
    head.get(no).copy_(&word.get(yes));
    tensors.push(("lm_head.weight".to_string(), head));
    tch::Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();

    let svc = DenseEmbeddingService::from_spec(
        ModelSpec::new(dir.path().to_string_lossy()).with_options(ModelOptions::default().with_llm_reranker(LlmReranker::qwen3())),
    )
    .await
    .unwrap();
    // The file's tensors but the LM head, whose two rows only are held.
    let file = embed_testkit::safetensors_bytes(&dir.path().join("model.safetensors"), 4, |n| n != "lm_head.weight");
    assert_eq!(svc.info().unwrap().weight_bytes, file + 2 * 64 * 4);
    let plain: Vec<&Item> = items.iter().filter(|i| i.instruction.is_none()).take(8).collect();
    let pairs: Vec<ClassifyInput> = plain.iter().map(|i| ClassifyInput::Pair(i.query.clone(), i.text.clone())).collect();
    let got = flat(&svc.classify(&pairs, &EmbedOptions::default()).await.unwrap().logits);
    let negated: Vec<f32> = plain.iter().map(|i| -i.logit).collect();
    let d = worst_diff(&got, &negated);
    assert!(d <= 1e-4, "untied head with exchanged rows: {got:?} vs {negated:?} ({d})");
    svc.cleanup().await.unwrap();
    assert_eq!((live_models(), live_weight_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misuse_is_refused_by_name() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    // Without the option a causal LM is an embedder, which does not rerank.
    let svc = load_with(CAUSAL, ModelOptions::default()).await.unwrap();
    assert_eq!(svc.info().unwrap().kind, ModelKind::Embedding);
    let err = svc.rerank("q", &["d".to_string()], &EmbedOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::WrongKind { kind: ModelKind::Embedding, operation: "rerank", .. }), "{err}");
    svc.cleanup().await.unwrap();

    // A cross-encoder has no instruction prompt: an instruction is refused, not ignored.
    let bert = load_with("bert-reranker", ModelOptions::default()).await.unwrap();
    let with_instruction = EmbedOptions::default().with_instruction("Find it");
    let err = bert.rerank("q", &["d".to_string()], &with_instruction).await.unwrap_err();
    assert!(matches!(err, Error::InvalidOption { name: "instruction", .. }) && err.to_string().contains("bert-reranker"), "{err}");
    assert_eq!(bert.rerank("q", &["d".to_string()], &EmbedOptions::default()).await.unwrap().logits.len(), 1);
    bert.cleanup().await.unwrap();
    // ...and it cannot be made an LLM reranker.
    let err = load_with("bert-reranker", options(CAUSAL)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidOption { name: "llm_reranker", .. }) && err.to_string().contains("decoder"), "{err}");

    let svc = load(CAUSAL).await;
    // A single text has no query.
    let err = svc.classify(&[ClassifyInput::Text("alone".into())], &EmbedOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidOption { name: "inputs", .. }), "{err}");
    // Over the limit without truncation: the whole prompt's tokens against the limit.
    let (_, items) = reference(CAUSAL);
    let long = items.iter().find(|i| i.truncated && i.instruction.is_none()).expect("a truncated pair");
    let strict = EmbedOptions::default().with_truncate(false);
    let err = svc.rerank(&long.query, std::slice::from_ref(&long.text), &strict).await.unwrap_err();
    assert!(matches!(err, Error::InputTooLong { index: 0, limit: 192, tokens } if tokens > 192), "{err}");
    svc.cleanup().await.unwrap();

    // Answer tokens that are not single tokens, a body without its placeholders, a limit the
    // prompt fills: refused at load, naming the problem.
    let bad = |r: LlmReranker| ModelOptions::default().with_llm_reranker(r);
    let err = load_with(CAUSAL, bad(LlmReranker::qwen3().with_answer_tokens("absolutely", "no"))).await.unwrap_err();
    assert!(matches!(&err, Error::Tokenizer { reason, .. } if reason.contains("\"absolutely\"")), "{err}");
    let err = load_with(CAUSAL, bad(LlmReranker::qwen3().with_prompt("", "{query}", ""))).await.unwrap_err();
    assert!(matches!(err, Error::InvalidOption { name: "llm_reranker", .. }) && err.to_string().contains("{document} 0 times"), "{err}");
    let short = options(SEQ_CLS).with_max_seq_length(40);
    let err = load_with(SEQ_CLS, short).await.unwrap_err();
    assert!(matches!(err, Error::InvalidOption { name: "max_seq_length", .. }) && err.to_string().contains("prefix"), "{err}");
    assert_eq!((live_models(), model_threads(), live_weight_bytes()), (0, 0, 0));
}

/// Both forms in f32 and bf16: weights counted, then freed as the C allocator measures it (as
/// `families.rs` measures the embedders).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_frees_its_weights() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let (_, items) = reference(CAUSAL);
    let pair = [ClassifyInput::Pair(items[0].query.clone(), items[0].text.clone())];
    let mut measured = 0;
    for name in [CAUSAL, SEQ_CLS] {
        for dtype in [DType::F32, DType::Bf16] {
            let mut retained = 0;
            let mut bytes = 0;
            // The first cycle warms up what stays for the process; the second is measured.
            for _ in 0..2 {
                let before = settled_snapshot();
                let svc = load_with(name, options(name).with_dtype(dtype)).await.unwrap();
                bytes = svc.info().unwrap().weight_bytes;
                let out = svc.classify(&pair, &EmbedOptions::default()).await.unwrap();
                assert!(out.logits[0][0].is_finite(), "{name} {dtype}: {:?}", out.logits);
                let loaded = settled_snapshot();
                let held = loaded.cpu_allocator.saturating_sub(before.cpu_allocator);
                assert!(held >= bytes, "{name} {dtype}: the allocator held {held} bytes with {bytes} bytes of weights loaded");
                svc.cleanup().await.unwrap();
                assert_eq!((live_models(), model_threads(), live_weight_bytes()), (0, 0, 0), "{name} {dtype}");
                retained = settled_snapshot().cpu_allocator as i64 - before.cpu_allocator as i64;
            }
            eprintln!("{name:>24} {dtype:>4}: weights {bytes:>7} B, {retained:>+6} B after cleanup");
            assert!(retained <= (bytes / 4) as i64, "{name} {dtype}: +{retained} B after a load and cleanup of {bytes} B of weights");
            measured += 1;
        }
    }
    assert_eq!(measured, 4);
}

/// An LLM reranker moves like any model: offloaded to host memory and brought back by the next
/// request, it scores bitwise as before; in bf16 and int8 (weight-only) it keeps close to f32
/// (figures printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_bf16_and_int8_keep_the_scores() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let (_, items) = reference(CAUSAL);
    let pairs: Vec<ClassifyInput> = items.iter().map(|i| ClassifyInput::Pair(i.query.clone(), i.text.clone())).collect();
    for name in [CAUSAL, SEQ_CLS] {
        let svc = load(name).await;
        // Bitwise needs the same batches both times: interactive batches are never cut short,
        // whereas a bulk request's batches are while interactive traffic is about (any model
        // of the process), and another batch composition moves the logits by rounding (~1e-7).
        let same_batches = EmbedOptions::default().with_priority(Priority::Interactive);
        let before = flat(&svc.classify(&pairs, &same_batches).await.unwrap().logits);
        let report = svc.offload().await.unwrap();
        assert!(report.moved && report.tensor_bytes == svc.info().unwrap().weight_bytes, "{name}: {report:?}");
        let after = flat(&svc.classify(&pairs, &same_batches).await.unwrap().logits);
        assert_eq!(before, after, "{name}: scores after an offload and the restore the request caused");
        assert_eq!(svc.batch_stats().unwrap().auto_restores, 1, "{name}");
        svc.cleanup().await.unwrap();
        for dtype in [DType::Bf16, DType::Int8] {
            // int8 weight-only on every CPU: oneDNN's int8 (the default where the CPU has VNNI)
            // calibrates on plain texts, not prompted pairs, and is not measured here.
            let kernel = (dtype == DType::Int8).then_some(Int8Kernel::WeightOnly);
            let svc = load_with(name, {
                let mut options = options(name).with_dtype(dtype);
                options.int8_kernel = kernel;
                options
            }).await.unwrap();
            let got = flat(&svc.classify(&pairs, &EmbedOptions::default()).await.unwrap().logits);
            let d = worst_diff(&got, &before);
            eprintln!("{name} {dtype}: worst logit difference to f32 {d:.3e} over {} pairs", got.len());
            // Measured on 2 cores: bf16 1.3e-2 / 1.4e-2, int8 1.9e-2 (both forms), on logits of
            // -1.7 to -0.6; a wrong head or prompt moves them by 0.1 and more.
            assert!(d <= 0.05, "{name} {dtype}: worst logit difference to f32 {d}");
            svc.cleanup().await.unwrap();
        }
    }
    assert_eq!((live_models(), live_weight_bytes()), (0, 0));
}
