//! Model directories as the Hub ships them: sharded safetensors (`model.safetensors.index.json`
//! and its shards) load to the same vectors as the single file, a broken shard set is a typed
//! error naming the file at fault with nothing left allocated, the pool's estimate reads the
//! shards' headers, and a `1_Pooling/config.json` in sentence-transformers 6's format reads.
//! A `pytorch_model.bin` written by `torch.save` gives its safetensors twin's vectors exactly, and
//! a pickle that is more than a state dict of tensors is refused with nothing left allocated.

use std::path::Path;

use embed_core::memory::{live_models, live_weight_bytes, model_threads};
use embed_core::{DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, Error, ModelOptions, ModelSpec};
use embed_testkit::checkpoints::{copy_model_dir, shard_checkpoint, sharded_fixture, torch_pickle_dir, torch_pickle_fixture};
use embed_testkit::memory::{assert_weights_freed, settled_snapshot};
use embed_testkit::{assert_cosines, assert_max_abs_diff, fixture_dir, fixture_query_reference, fixture_reference, serial};

async fn load(dir: &Path) -> embed_core::Result<DenseEmbeddingService> {
    let options = ModelOptions::default().with_dtype(DType::F32);
    DenseEmbeddingService::from_spec(ModelSpec::new(dir.to_string_lossy()).with_options(options)).await
}

async fn embed(dir: &Path, texts: &[String]) -> (Vec<Vec<f32>>, u64) {
    let svc = load(dir).await.unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let bytes = svc.info().unwrap().weight_bytes;
    let out = svc.embed_texts(texts, &EmbedOptions::default()).await.unwrap().vectors;
    svc.cleanup().await.unwrap();
    (out, bytes)
}

fn texts_of(name: &str) -> (Vec<String>, Vec<Vec<f32>>) {
    let items = fixture_reference(name);
    (items.iter().map(|i| i.text.clone()).collect(), items.iter().map(|i| i.embedding.clone()).collect())
}

fn assert_nothing_live(what: &str) {
    assert_eq!((live_models(), model_threads(), live_weight_bytes()), (0, 0, 0), "{what}: after the failed load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_checkpoints_give_the_single_files_vectors() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    // A decoder (no weight-name prefix, tied embeddings), a BERT (`bert.` prefix, a pooler it
    // skips) and an encoder with a Dense module: each in 3 shards.
    for name in ["qwen3", "bert", "distilbert"] {
        let (texts, expected) = texts_of(name);
        let (single, single_bytes) = embed(&fixture_dir(name), &texts).await;
        let tmp = sharded_fixture(name, 3);
        assert!(!tmp.path().join("model.safetensors").exists() && tmp.path().join("model.safetensors.index.json").is_file());
        let (sharded, bytes) = embed(tmp.path(), &texts).await;
        assert_eq!(bytes, single_bytes, "{name}: weight bytes, sharded vs single");
        assert_max_abs_diff(&format!("{name}: sharded vs single file"), &sharded, &single, 0.0);
        assert_cosines(&format!("{name}: sharded vs sentence-transformers"), &sharded, &expected, 0.99999);
    }
    // The decoder's prompted queries through the sharded copy too.
    let tmp = sharded_fixture("qwen3", 2);
    let queries = fixture_query_reference("qwen3");
    assert!(!queries.is_empty(), "qwen3 has query items");
    let svc = load(tmp.path()).await.unwrap();
    let texts: Vec<String> = queries.iter().map(|i| i.text.clone()).collect();
    let opts = EmbedOptions::default().with_prompt_name("query");
    let got = svc.embed_texts(&texts, &opts).await.unwrap().vectors;
    svc.cleanup().await.unwrap();
    let expected: Vec<Vec<f32>> = queries.iter().map(|i| i.embedding.clone()).collect();
    assert_cosines("qwen3 sharded queries", &got, &expected, 0.99999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estimate_reads_every_shards_header() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let tmp = sharded_fixture("qwen3", 3);
    for dtype in [None, Some(DType::F32), Some(DType::Bf16), Some(DType::Int8)] {
        let single = embed_core::estimate_weight_bytes(&fixture_dir("qwen3"), dtype).unwrap();
        let sharded = embed_core::estimate_weight_bytes(tmp.path(), dtype).unwrap();
        assert_eq!(sharded, single, "{dtype:?}");
    }
    // Shards not there yet (a hub download in progress): the index's total_size, rescaled.
    let total = {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("model.safetensors.index.json")).unwrap()).unwrap();
        v["metadata"]["total_size"].as_u64().unwrap()
    };
    std::fs::remove_file(tmp.path().join("model-00002-of-00003.safetensors")).unwrap();
    // The fixture's config says float32.
    assert_eq!(embed_core::estimate_weight_bytes(tmp.path(), None), Some(total));
    assert_eq!(embed_core::estimate_weight_bytes(tmp.path(), Some(DType::Bf16)), Some(total / 2));
}

/// Loads `dir`, which must fail; checks the error and that nothing stays allocated.
async fn assert_load_fails(what: &str, dir: &Path, check: impl Fn(&Error) -> bool) -> String {
    let before = settled_snapshot();
    let err = match load(dir).await {
        Ok(svc) => {
            svc.cleanup().await.unwrap();
            panic!("{what}: the load succeeded");
        }
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(check(&err), "{what}: unexpected error {err:?}");
    assert_nothing_live(what);
    let after = settled_snapshot();
    // Nothing of the model stays in the C allocator (its weights are ~0.7 MiB; any tensor kept
    // would show at once against a 1 MiB allowance for allocator noise).
    let grew = after.cpu_allocator.saturating_sub(before.cpu_allocator);
    assert!(grew < 1 << 20, "{what}: the C allocator holds {grew} more bytes after the failed load");
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_shard_set_is_a_typed_error_naming_the_file() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    // Warm up (first loads allocate libtorch's and the tokenizer's one-time state).
    let (texts, _) = texts_of("qwen3");
    embed(&fixture_dir("qwen3"), &texts[..2]).await;
    let shard2 = "model-00002-of-00003.safetensors";

    let tmp = sharded_fixture("qwen3", 3);
    std::fs::remove_file(tmp.path().join(shard2)).unwrap();
    let msg = assert_load_fails("a missing shard", tmp.path(), |e| matches!(e, Error::MissingFile { path, .. } if path.ends_with(shard2))).await;
    assert!(msg.contains(shard2) && msg.contains("model.safetensors.index.json"), "{msg}");

    let tmp = sharded_fixture("qwen3", 3);
    let path = tmp.path().join(shard2);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 100).unwrap();
    assert_load_fails("a truncated shard", tmp.path(), |e| matches!(e, Error::InvalidWeights { path, .. } if path.ends_with(shard2))).await;

    let tmp = sharded_fixture("qwen3", 3);
    std::fs::write(tmp.path().join(shard2), b"not safetensors at all").unwrap();
    assert_load_fails("a corrupt shard", tmp.path(), |e| matches!(e, Error::InvalidWeights { path, .. } if path.ends_with(shard2))).await;

    // A tensor in two shards: shard 3 rewritten to also hold one of shard 1's tensors.
    let tmp = sharded_fixture("qwen3", 3);
    let one = tch::Tensor::read_safetensors(tmp.path().join("model-00001-of-00003.safetensors")).unwrap();
    let mut three = tch::Tensor::read_safetensors(tmp.path().join("model-00003-of-00003.safetensors")).unwrap();
    let twice = one[0].0.clone();
    three.push(one.into_iter().next().unwrap());
    tch::Tensor::write_safetensors(&three, tmp.path().join("model-00003-of-00003.safetensors")).unwrap();
    let msg = assert_load_fails("a tensor named twice", tmp.path(), |e| matches!(e, Error::InvalidWeights { .. })).await;
    assert!(msg.contains(&twice) && msg.contains("model-00001-of-00003") && msg.contains("model-00003-of-00003"), "{msg}");

    // The index maps a tensor to a shard that does not hold it.
    let tmp = sharded_fixture("qwen3", 3);
    let index_path = tmp.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    let (moved, _) = map.iter().find(|(_, f)| f.as_str() == Some("model-00001-of-00003.safetensors")).map(|(k, f)| (k.clone(), f.clone())).unwrap();
    map.insert(moved.clone(), "model-00003-of-00003.safetensors".into());
    std::fs::write(&index_path, index.to_string()).unwrap();
    let msg = assert_load_fails("an index that disagrees", tmp.path(), |e| matches!(e, Error::InvalidWeights { path, .. } if path.ends_with("model.safetensors.index.json"))).await;
    assert!(msg.contains(&moved), "{msg}");

    // An index whose shard name leaves the directory.
    let tmp = sharded_fixture("qwen3", 2);
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("model.safetensors.index.json")).unwrap()).unwrap();
    let first = index["weight_map"].as_object().unwrap().keys().next().unwrap().clone();
    index["weight_map"][&first] = "../model-00001-of-00002.safetensors".into();
    std::fs::write(tmp.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let msg = assert_load_fails("a shard outside the directory", tmp.path(), |e| matches!(e, Error::InvalidWeights { .. })).await;
    assert!(msg.contains("plain file name"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_model_frees_every_shards_bytes() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let (texts, _) = texts_of("qwen3");
    let tmp = sharded_fixture("qwen3", 3);
    // Warm-up cycle, then a measured one.
    embed(tmp.path(), &texts[..2]).await;
    let svc = load(tmp.path()).await.unwrap();
    let bytes = svc.info().unwrap().weight_bytes;
    svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
    let loaded = settled_snapshot();
    svc.cleanup().await.unwrap();
    let released = settled_snapshot();
    assert_nothing_live("after cleanup");
    assert_weights_freed("sharded qwen3", &loaded, &released, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooling_config_in_sentence_transformers_6_format_reads() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    // bert: CLS pooling; roberta: mean; qwen3: last token with include_prompt.
    for (name, mode) in [("bert", "cls"), ("roberta", "mean"), ("qwen3", "lasttoken")] {
        let tmp = tempfile::tempdir().unwrap();
        copy_model_dir(&fixture_dir(name), tmp.path());
        let path = tmp.path().join("1_Pooling/config.json");
        let old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let flag = match mode {
            "cls" => "pooling_mode_cls_token",
            "mean" => "pooling_mode_mean_tokens",
            _ => "pooling_mode_lasttoken",
        };
        assert_eq!(old[flag], true, "{name}: the fixture pools by {mode}");
        let v6 = serde_json::json!({
            "embedding_dimension": old["word_embedding_dimension"],
            "pooling_mode": mode,
            "include_prompt": old.get("include_prompt").cloned().unwrap_or(true.into()),
        });
        std::fs::write(&path, v6.to_string()).unwrap();
        let (texts, expected) = texts_of(name);
        let (got, _) = embed(tmp.path(), &texts).await;
        assert_cosines(&format!("{name} with a sentence-transformers 6 pooling config"), &got, &expected, 0.99999);
    }
    // And a sharded copy of it, as a new user saving Qwen3-Embedding-8B with sentence-transformers 6 gets.
    let tmp = tempfile::tempdir().unwrap();
    copy_model_dir(&fixture_dir("qwen3"), tmp.path());
    shard_checkpoint(tmp.path(), 2);
    std::fs::write(tmp.path().join("1_Pooling/config.json"), r#"{"embedding_dimension": 64, "pooling_mode": "lasttoken", "include_prompt": true}"#).unwrap();
    let (texts, expected) = texts_of("qwen3");
    let (got, _) = embed(tmp.path(), &texts).await;
    assert_cosines("sharded qwen3, sentence-transformers 6 pooling", &got, &expected, 0.99999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pytorch_model_bin_gives_its_safetensors_twins_vectors_exactly() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    // distilbert's encoder and its Dense module, each a torch.save'd state_dict() (an
    // OrderedDict with `_metadata`, one tensor a transposed view, one at a storage offset).
    let (texts, expected) = texts_of("distilbert");
    let (twin, twin_bytes) = embed(&fixture_dir("distilbert"), &texts).await;
    let tmp = torch_pickle_fixture();
    assert!(!tmp.path().join("model.safetensors").exists() && !tmp.path().join("2_Dense/model.safetensors").exists());
    let (got, bytes) = embed(tmp.path(), &texts).await;
    assert_eq!(bytes, twin_bytes, "weight bytes, pytorch_model.bin vs safetensors");
    assert_max_abs_diff("pytorch_model.bin vs its safetensors twin", &got, &twin, 0.0);
    assert_cosines("pytorch_model.bin vs sentence-transformers", &got, &expected, 0.99999);
    for dtype in [None, Some(DType::F32), Some(DType::Bf16), Some(DType::Int8)] {
        let from_bin = embed_core::estimate_weight_bytes(tmp.path(), dtype);
        assert!(from_bin.is_some_and(|b| b > 0), "{dtype:?}: {from_bin:?}");
        assert_eq!(from_bin, embed_core::estimate_weight_bytes(&fixture_dir("distilbert"), dtype), "{dtype:?}: estimate from the pickle vs the safetensors header");
    }

    // Both present: safetensors is read and pytorch_model.bin is not (it is garbage here).
    let both = tempfile::tempdir().unwrap();
    copy_model_dir(&fixture_dir("distilbert"), both.path());
    std::fs::write(both.path().join("pytorch_model.bin"), b"not read").unwrap();
    let (got, _) = embed(both.path(), &texts).await;
    assert_max_abs_diff("safetensors preferred over pytorch_model.bin", &got, &twin, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pickle_that_is_more_than_tensors_is_refused_naming_the_file() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let (texts, _) = texts_of("distilbert");
    embed(&fixture_dir("distilbert"), &texts[..2]).await;
    let refused = torch_pickle_dir().join("refused");
    let is_bin = |p: &Path| p.ends_with("pytorch_model.bin");
    type Check<'a> = &'a dyn Fn(&Error) -> bool;
    let cases: [(&str, &str, Check); 5] = [
        ("code.bin", "posix.system", &|e| matches!(e, Error::PickleRefused { path, .. } if is_bin(path))),
        ("custom-class.bin", "__main__.CustomClass", &|e| matches!(e, Error::PickleRefused { path, .. } if is_bin(path))),
        ("not-a-tensor.bin", "\"step\" is the int 3", &|e| matches!(e, Error::PickleRefused { path, .. } if is_bin(path))),
        ("legacy.bin", "safetensors", &|e| matches!(e, Error::LegacyTorchFormat { path } if is_bin(path))),
        ("truncated", "zip archive", &|e| matches!(e, Error::InvalidWeights { path, .. } if is_bin(path))),
    ];
    for (file, says, check) in cases {
        let tmp = torch_pickle_fixture();
        let bin = tmp.path().join("pytorch_model.bin");
        if file == "truncated" {
            // Cut in half (a download that stopped): the zip's directory at its end is gone.
            let full = std::fs::read(&bin).unwrap();
            std::fs::write(&bin, &full[..full.len() / 2]).unwrap();
        } else {
            std::fs::copy(refused.join(file), &bin).unwrap();
        }
        let msg = assert_load_fails(file, tmp.path(), check).await;
        assert!(msg.contains(&bin.display().to_string()) && msg.contains(says), "{file}: {msg}");
    }
}
