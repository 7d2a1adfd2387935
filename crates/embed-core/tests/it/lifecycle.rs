//! Lifecycle state machine, typed errors for bad models and bad input, on the tiny model.
//! Tests here assert process-wide live-model counts, so they take a lock to run one at a time.

use std::time::Duration;

use embed_core::memory::{live_models, live_weight_bytes, model_threads};
use embed_core::{DType, DenseEmbeddingService, DeviceSpec, EmbedOptions, EmbeddingService, Error, FaultInjection, InputMode, ModelOptions, ModelSpec, ServiceState, RetrievalTasks};
use embed_testkit::memory::wait_for_no_live_models;
use embed_testkit::{corrupt_weights, TinyModel};

// An async mutex: the guard is held across awaits for the whole test.

fn spec(dir: &std::path::Path) -> ModelSpec {
    ModelSpec::new(dir.to_string_lossy())
}

fn texts(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn load_embed_cleanup_reload() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_tmp, dir) = TinyModel::default().write_temp();
    let svc = DenseEmbeddingService::new();
    assert_eq!(svc.state(), ServiceState::Unloaded);
    assert!(matches!(
        svc.embed_texts(&texts(&["x"]), &EmbedOptions::default()).await,
        Err(Error::NotReady { state: ServiceState::Unloaded })
    ));
    let info = svc.load(spec(&dir)).await.unwrap();
    assert_eq!(info.dimension, 32);
    assert!(info.weight_bytes > 0);
    assert_eq!(live_models(), 1);
    assert_eq!(live_weight_bytes(), info.weight_bytes);
    assert!(matches!(svc.load(spec(&dir)).await, Err(Error::AlreadyLoaded { .. })));

    let out = svc.embed_texts(&texts(&["hello world", "the cat"]), &EmbedOptions::default()).await.unwrap();
    assert_eq!(out.vectors.len(), 2);
    for v in &out.vectors {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalized output has norm {norm}");
    }

    let report = svc.cleanup().await.unwrap();
    assert_eq!(report.model_weight_bytes, info.weight_bytes);
    assert_eq!(svc.state(), ServiceState::Closed);
    assert_eq!(live_models(), 0);
    assert_eq!(live_weight_bytes(), 0);
    let err = svc.embed_texts(&texts(&["x"]), &EmbedOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::NotReady { state: ServiceState::Closed }), "{err}");
    assert!(err.to_string().contains("cleaned up"));
    // Idempotent.
    assert_eq!(svc.cleanup().await.unwrap().model_weight_bytes, 0);
    // A closed service can load again.
    svc.load(spec(&dir)).await.unwrap();
    assert!(svc.is_ready());
    svc.cleanup().await.unwrap();
    assert_eq!(live_models(), 0);
}

async fn assert_load_fails(dir: &std::path::Path, check: impl Fn(&Error) -> bool) -> String {
    let svc = DenseEmbeddingService::new();
    let err = svc.load(spec(dir)).await.unwrap_err();
    assert!(check(&err), "unexpected error: {err:?}");
    assert_eq!(svc.state(), ServiceState::Unloaded);
    assert_eq!(live_models(), 0, "a failed load left a model alive");
    assert_eq!(live_weight_bytes(), 0);
    // The same service then loads a good model.
    let (_tmp, good) = TinyModel::default().write_temp();
    svc.load(spec(&good)).await.unwrap();
    svc.cleanup().await.unwrap();
    err.to_string()
}

#[tokio::test]
async fn failed_loads_are_typed_and_leave_nothing() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let tiny = TinyModel::default();

    let (_t, dir) = tiny.write_temp();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let msg = assert_load_fails(&dir, |e| matches!(e, Error::MissingFile { .. })).await;
    assert!(msg.contains("model.safetensors"), "{msg}");

    let (_t, dir) = tiny.write_temp();
    corrupt_weights(&dir);
    let msg = assert_load_fails(&dir, |e| matches!(e, Error::InvalidWeights { .. })).await;
    assert!(msg.contains("model.safetensors"), "{msg}");

    // Config says 3 layers, weights have 2.
    let (_t, dir) = tiny.write_temp();
    let cfg_path = dir.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap().replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    std::fs::write(&cfg_path, cfg).unwrap();
    let msg = assert_load_fails(&dir, |e| matches!(e, Error::WeightsMismatch { .. })).await;
    assert!(msg.contains("encoder.layer.2"), "{msg}");

    // Wrong hidden size: shape mismatch named.
    let (_t, dir) = tiny.write_temp();
    let (_t2, other) = TinyModel { hidden: 16, heads: 2, ..TinyModel::default() }.write_temp();
    std::fs::copy(other.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let msg = assert_load_fails(&dir, |e| matches!(e, Error::WeightsMismatch { .. })).await;
    assert!(msg.contains("shape"), "{msg}");

    let (_t, dir) = tiny.write_temp();
    let cfg_path = dir.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap().replace("\"bert\"", "\"gpt2\"");
    std::fs::write(&cfg_path, cfg).unwrap();
    let msg = assert_load_fails(&dir, |e| matches!(e, Error::UnsupportedArchitecture { .. })).await;
    assert!(msg.contains("gpt2") && msg.contains("supported: bert, roberta, xlm-roberta"), "{msg}");

    let (_t, dir) = tiny.write_temp();
    std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
    let msg = assert_load_fails(&dir, |e| matches!(e, Error::Tokenizer { .. })).await;
    assert!(msg.contains("tokenizer.json"), "{msg}");

    let (_t, dir) = tiny.write_temp();
    std::fs::write(dir.join("config.json"), "[1, 2").unwrap();
    assert_load_fails(&dir, |e| matches!(e, Error::InvalidConfig { .. })).await;

    assert_load_fails(std::path::Path::new("/no/such/model"), |e| matches!(e, Error::InvalidSource { .. })).await;
    assert_load_fails(std::path::Path::new("../../etc"), |e| matches!(e, Error::InvalidSource { .. })).await;
}

#[tokio::test]
async fn devices_and_dtypes() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_tmp, dir) = TinyModel::default().write_temp();
    let with = |device, dtype| spec(&dir).with_options(ModelOptions::default().with_device(device).with_dtype(dtype));
    if embed_core::cuda_device_count() == 0 {
        // No silent CPU fallback: explicit CUDA without CUDA is an error that says why.
        let err = DenseEmbeddingService::from_spec(with(DeviceSpec::Cuda(0), DType::F32)).await.unwrap_err();
        assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err}");
        assert!(err.to_string().contains("cuda:0"));
        let svc = DenseEmbeddingService::from_spec(with(DeviceSpec::Auto, DType::F32)).await.unwrap();
        let info = svc.info().unwrap();
        assert_eq!(info.device, embed_core::ResolvedDevice::Cpu);
        assert!(info.device_note.unwrap().contains("using cpu"));
        svc.cleanup().await.unwrap();
    }
    let err = DenseEmbeddingService::from_spec(with(DeviceSpec::Cpu, DType::F16)).await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedDtype { .. }), "{err}");
    let svc = DenseEmbeddingService::from_spec(with(DeviceSpec::Cpu, DType::Bf16)).await.unwrap();
    let info = svc.info().unwrap();
    assert_eq!(info.dtype, DType::Bf16);
    let f32_svc = DenseEmbeddingService::from_spec(with(DeviceSpec::Cpu, DType::F32)).await.unwrap();
    assert_eq!(info.weight_bytes * 2, f32_svc.info().unwrap().weight_bytes);
    let t = texts(&["hello world"]);
    let a = svc.embed_texts(&t, &EmbedOptions::default()).await.unwrap();
    let b = f32_svc.embed_texts(&t, &EmbedOptions::default()).await.unwrap();
    assert!(embed_testkit::cosine(&a.vectors[0], &b.vectors[0]) > 0.99);
    svc.cleanup().await.unwrap();
    f32_svc.cleanup().await.unwrap();
}

#[tokio::test]
async fn bad_input() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_tmp, dir) = TinyModel::default().write_temp();
    let svc = DenseEmbeddingService::from_spec(spec(&dir)).await.unwrap();
    let o = EmbedOptions::default();

    assert_eq!(svc.embed_texts(&[], &o).await.unwrap().vectors.len(), 0);
    // Empty string: [CLS] [SEP], a valid vector as sentence-transformers gives.
    let e = svc.embed_texts(&texts(&[""]), &o).await.unwrap();
    assert_eq!(e.token_counts, vec![2]);
    assert!(e.vectors[0].iter().all(|x| x.is_finite()));
    // Whitespace and unknown characters.
    let e = svc.embed_texts(&texts(&["   ", "日本語 ☃ \u{0}"]), &o).await.unwrap();
    assert!(e.vectors.iter().flatten().all(|x| x.is_finite()));

    // Longer than max_seq_length (64): truncated and reported.
    let long = "hello world ".repeat(200);
    let e = svc.embed_texts(&texts(&[&long, "cat"]), &o).await.unwrap();
    assert_eq!(e.token_counts[0], 64);
    assert_eq!(e.truncated, vec![true, false]);
    let no_trunc = EmbedOptions::default().with_truncate(false);
    let err = svc.embed_texts(&texts(&["cat", &long]), &no_trunc).await.unwrap_err();
    assert!(matches!(err, Error::InputTooLong { index: 1, limit: 64, .. }), "{err}");

    let err = svc.embed_texts(&texts(&["x"]), &EmbedOptions::default().with_prompt_name("nope")).await.unwrap_err();
    assert!(matches!(err, Error::UnknownPrompt { .. }), "{err}");

    // Pre-tokenized input gives the same vector as the text it came from.
    let tok = svc.tokenize(&texts(&["hello world"]), &o).await.unwrap();
    let from_ids = svc.embed_token_ids(&[tok[0].ids.clone()], &o).await.unwrap();
    let from_text = svc.embed_texts(&texts(&["hello world"]), &o).await.unwrap();
    assert_eq!(from_ids.vectors, from_text.vectors);
    let err = svc.embed_token_ids(&[vec![2, 999_999, 3]], &o).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTokens { index: 0, .. }) && err.to_string().contains("999999"), "{err}");
    assert!(matches!(svc.embed_token_ids(&[vec![]], &o).await, Err(Error::InvalidTokens { .. })));

    // normalize=false gives the raw pooled vector.
    let raw = svc.embed_texts(&texts(&["hello"]), &EmbedOptions::default().with_normalize(false)).await.unwrap();
    let norm: f32 = raw.vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "raw vector unexpectedly unit-norm");
    svc.cleanup().await.unwrap();
}

#[tokio::test]
async fn prompts_and_modes() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let tiny = TinyModel {
        prompts: vec![("query".into(), "query: ".into()), ("document".into(), "passage: ".into())],
        ..TinyModel::default()
    };
    let (_tmp, dir) = tiny.write_temp();
    let svc = DenseEmbeddingService::from_spec(spec(&dir)).await.unwrap();
    let t = texts(&["the cat"]);
    let plain = svc.embed_texts(&t, &EmbedOptions::default()).await.unwrap();
    let q = svc.embed_texts(&t, &EmbedOptions::query()).await.unwrap();
    let d = svc.embed_texts(&t, &EmbedOptions::document()).await.unwrap();
    let explicit = svc.embed_texts(&texts(&["query: the cat"]), &EmbedOptions::default()).await.unwrap();
    assert_eq!(q.vectors, explicit.vectors, "query mode applies the model's query prompt");
    assert_ne!(q.vectors, d.vectors);
    assert_ne!(q.vectors, plain.vectors);
    assert_eq!(q.token_counts[0], plain.token_counts[0] + 2);
    let named = svc.embed_texts(&t, &EmbedOptions::default().with_prompt_name("document")).await.unwrap();
    assert_eq!(named.vectors, d.vectors);
    let instr = svc
        .embed_texts(&t, &EmbedOptions::default().with_instruction("query: ").with_mode(InputMode::Document))
        .await
        .unwrap();
    assert_eq!(instr.vectors, q.vectors, "a literal instruction wins over the mode");
    let tok = svc.tokenize(&t, &EmbedOptions::query()).await.unwrap();
    assert_eq!(tok[0].tokens.first().map(String::as_str), Some("[CLS]"));
    assert!(tok[0].tokens.contains(&"query".to_string()));
    svc.cleanup().await.unwrap();
}

/// TEI's `--default-prompt` / `--default-prompt-name`: the prompt for inputs a request gives
/// no mode, name or instruction for; an unknown name fails the load, naming the model's prompts.
#[tokio::test]
async fn default_prompt_options() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let tiny = TinyModel {
        prompts: vec![("query".into(), "query: ".into()), ("document".into(), "passage: ".into())],
        ..TinyModel::default()
    };
    let (_tmp, dir) = tiny.write_temp();
    let t = texts(&["the cat"]);
    let with = |o: ModelOptions| spec(&dir).with_options(o);
    let svc = DenseEmbeddingService::from_spec(spec(&dir)).await.unwrap();
    let plain = svc.embed_texts(&t, &EmbedOptions::default()).await.unwrap();
    let query = svc.embed_texts(&texts(&["query: the cat"]), &EmbedOptions::default()).await.unwrap();
    let literal = svc.embed_texts(&texts(&["search: the cat"]), &EmbedOptions::default()).await.unwrap();
    let passage = svc.embed_texts(&t, &EmbedOptions::document()).await.unwrap();
    svc.cleanup().await.unwrap();
    assert_ne!(plain.vectors, query.vectors);

    let named = DenseEmbeddingService::from_spec(with(ModelOptions::default().with_default_prompt_name("query"))).await.unwrap();
    assert_eq!(named.embed_texts(&t, &EmbedOptions::default()).await.unwrap().vectors, query.vectors, "the named prompt by default");
    assert_eq!(named.embed_texts(&t, &EmbedOptions::document()).await.unwrap().vectors, passage.vectors, "a mode still picks its own prompt");
    named.cleanup().await.unwrap();

    let given = DenseEmbeddingService::from_spec(with(ModelOptions::default().with_default_prompt("search: "))).await.unwrap();
    assert_eq!(given.embed_texts(&t, &EmbedOptions::default()).await.unwrap().vectors, literal.vectors, "the literal prompt by default");
    given.cleanup().await.unwrap();

    let err = DenseEmbeddingService::from_spec(with(ModelOptions::default().with_default_prompt_name("classify")))
        .await
        .err()
        .expect("an unknown default prompt name fails the load");
    assert!(matches!(&err, Error::UnknownPrompt { name, known, .. } if name == "classify" && known == "document, query"), "{err}");
}

#[tokio::test]
async fn dropping_a_service_frees_its_model() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_tmp, dir) = TinyModel::default().write_temp();
    let svc = DenseEmbeddingService::from_spec(spec(&dir)).await.unwrap();
    assert_eq!(live_models(), 1);
    drop(svc);
    assert_eq!(wait_for_no_live_models(Duration::from_secs(10)), 0);
    assert_eq!(live_weight_bytes(), 0);
}

#[tokio::test]
async fn cancelled_load_leaves_nothing() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let (_tmp, dir) = TinyModel::default().write_temp();
    let svc = DenseEmbeddingService::new();
    // The worker holds the loaded model until the load is dropped (an hour otherwise): the
    // cancellation below always finds a model to release, however slow the machine.
    let faults = FaultInjection { load_delay: Some(Duration::from_secs(3600)), ..Default::default() };
    {
        let load = svc.load(spec(&dir).with_options(ModelOptions::default().with_faults(faults)));
        tokio::pin!(load);
        while live_models() == 0 {
            tokio::select! {
                r = &mut load => panic!("the load finished although its worker waits an hour: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        assert_eq!(svc.state(), ServiceState::Loading);
        assert_eq!((model_threads(), live_weight_bytes() > 0), (1, true), "the worker holds the model");
    }
    // Dropped half-way: the service is unloaded at once, and the orphaned worker frees the
    // model and exits.
    assert_eq!(svc.state(), ServiceState::Unloaded);
    assert_eq!(wait_for_no_live_models(Duration::from_secs(30)), 0, "the orphaned worker did not exit");
    assert_eq!((live_models(), model_threads(), live_weight_bytes()), (0, 0, 0));
    svc.load(spec(&dir)).await.unwrap();
    svc.cleanup().await.unwrap();
    assert_eq!((live_models(), model_threads()), (0, 0));
}
