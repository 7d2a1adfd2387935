//! Models by hub id, against a loopback stand-in for the hub (`embed_testkit::hub`) pointed at
//! with `HF_ENDPOINT` and a temporary `HF_HOME`: every file a model needs arrives (shards, the
//! module folders `modules.json` names, the tokenizer's config), the cache serves a second load
//! offline, a repo with only `pytorch_model.bin` weights loads (and one with safetensors too
//! does not fetch the `.bin`), a revision pin fetches that revision, a gated repo needs its token (which appears in
//! no error or log line), and an unknown id fails naming the id.
//!
//! The hub's environment variables are process-wide: every test here holds `serial()` and
//! sets them all.

use std::sync::{Arc, Mutex};

use embed_core::memory::live_weight_bytes;
use embed_core::{DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, Error, ModelOptions, ModelSpec};
use embed_testkit::checkpoints::{copy_model_dir, sharded_fixture, torch_pickle_fixture};
use embed_testkit::hub::StandInHub;
use embed_testkit::{assert_cosines, assert_max_abs_diff, fixture_dir, fixture_reference, serial};

const COMMIT_A: &str = "0123456789abcdef0123456789abcdef01234567";
const COMMIT_B: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// The hub client's variables, pointing at a stand-in hub, and its cache.
struct HubEnv(tempfile::TempDir);

const HUB_VARS: [&str; 5] = ["HF_ENDPOINT", "HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_TOKEN_PATH"];

impl HubEnv {
    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for HubEnv {
    /// Unsets the variables again: the tests after these (in this binary) meet no stand-in hub
    /// that has gone.
    fn drop(&mut self) {
        for var in HUB_VARS {
            std::env::remove_var(var);
        }
    }
}

/// Points the hub client at `hub` with an empty cache; the cache is removed and the variables
/// unset on drop.
fn hub_env(hub: &StandInHub) -> HubEnv {
    let home = tempfile::tempdir().unwrap();
    for var in HUB_VARS {
        std::env::remove_var(var);
    }
    std::env::set_var("HF_ENDPOINT", hub.endpoint());
    std::env::set_var("HF_HOME", home.path());
    HubEnv(home)
}

async fn load(source: &str) -> embed_core::Result<DenseEmbeddingService> {
    let options = ModelOptions::default().with_dtype(DType::F32);
    DenseEmbeddingService::from_spec(ModelSpec::new(source).with_options(options)).await
}

async fn embed(source: &str, texts: &[String]) -> (Vec<Vec<f32>>, std::path::PathBuf) {
    let svc = load(source).await.unwrap_or_else(|e| panic!("{source}: {e}"));
    let dir = svc.info().unwrap().dir.clone();
    let out = svc.embed_texts(texts, &EmbedOptions::default()).await.unwrap().vectors;
    svc.cleanup().await.unwrap();
    (out, dir)
}

fn texts_of(name: &str) -> (Vec<String>, Vec<Vec<f32>>) {
    let items = fixture_reference(name);
    (items.iter().map(|i| i.text.clone()).collect(), items.iter().map(|i| i.embedding.clone()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_decoder_loads_by_id_and_then_offline_from_the_cache() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let hub = StandInHub::start();
    let sharded = sharded_fixture("qwen3", 3);
    hub.publish("org/qwen3-sharded", "main", COMMIT_A, sharded.path());
    let _home = hub_env(&hub);
    let (texts, expected) = texts_of("qwen3");

    let (got, dir) = embed("org/qwen3-sharded", &texts).await;
    assert_cosines("qwen3 by hub id", &got, &expected, 0.99999);
    assert_eq!(embed_core::hub_commit(&dir).as_deref(), Some(COMMIT_A), "{}", dir.display());
    let fetched: Vec<String> = hub.requests().into_iter().map(|r| r.path).collect();
    for shard in ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json", "config_sentence_transformers.json", "1_Pooling/config.json", "tokenizer_config.json"] {
        assert!(fetched.iter().any(|p| p.ends_with(&format!("/resolve/main/{shard}"))), "{shard} was not fetched: {fetched:?}");
    }
    let asked = hub.requests().len();
    // A second load finds everything in the cache and asks the hub nothing.
    let (again, _) = embed("org/qwen3-sharded", &texts).await;
    assert_max_abs_diff("from the cache vs the first load", &again, &got, 0.0);
    assert_eq!(hub.requests().len(), asked, "a fully cached model asked the hub again");
    hub.stop();

    // The hub gone, with and without HF_HUB_OFFLINE: the cache has everything.
    let (again, _) = embed("org/qwen3-sharded", &texts).await;
    assert_max_abs_diff("the hub unreachable, from the cache vs the first load", &again, &got, 0.0);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let (again, _) = embed("org/qwen3-sharded", &texts).await;
    assert_max_abs_diff("offline from the cache vs the first load", &again, &got, 0.0);
    std::env::remove_var("HF_HUB_OFFLINE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_module_folder_and_the_tokenizers_length_limit_arrive() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    // distilbert has a 2_Dense module (32 -> 24); without sentence_bert_config.json its length
    // limit is tokenizer_config.json's model_max_length, set to 16 here.
    let repo = tempfile::tempdir().unwrap();
    copy_model_dir(&fixture_dir("distilbert"), repo.path());
    std::fs::remove_file(repo.path().join("sentence_bert_config.json")).unwrap();
    let tc_path = repo.path().join("tokenizer_config.json");
    let mut tc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tc_path).unwrap()).unwrap();
    tc["model_max_length"] = 16.into();
    std::fs::write(&tc_path, tc.to_string()).unwrap();

    let hub = StandInHub::start();
    hub.publish("org/distiluse-like", "main", COMMIT_A, repo.path());
    let _home = hub_env(&hub);
    let (texts, _) = texts_of("distilbert");
    let svc = load("org/distiluse-like").await.unwrap();
    let info = svc.info().unwrap();
    assert_eq!((info.dimension, info.max_seq_length), (24, 16), "the Dense module's width and the tokenizer's limit");
    let out = svc.embed_texts(&texts, &EmbedOptions::default()).await.unwrap();
    svc.cleanup().await.unwrap();
    assert!(out.token_counts.iter().all(|&n| n <= 16) && out.token_counts.contains(&16), "{:?}", out.token_counts);
    // The same directory read locally gives the same vectors.
    let (local, _) = embed(&repo.path().to_string_lossy(), &texts).await;
    assert_max_abs_diff("by id vs the same directory", &out.vectors, &local, 0.0);
    let fetched: Vec<String> = hub.requests().into_iter().map(|r| r.path).collect();
    for f in ["2_Dense/config.json", "2_Dense/model.safetensors"] {
        assert!(fetched.iter().any(|p| p.ends_with(f)), "{f} was not fetched: {fetched:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_pin_fetches_that_revision() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let hub = StandInHub::start();
    // main is the bert fixture; tag v1 is an older commit with the roberta fixture's files.
    hub.publish("org/pinned", "main", COMMIT_A, &fixture_dir("bert"));
    hub.publish("org/pinned", "v1", COMMIT_B, &fixture_dir("roberta"));
    let _home = hub_env(&hub);
    let (bert_texts, bert_expected) = texts_of("bert");
    let (roberta_texts, roberta_expected) = texts_of("roberta");

    let (got, dir) = embed("org/pinned@v1", &roberta_texts).await;
    assert_cosines("org/pinned@v1", &got, &roberta_expected, 0.99999);
    assert_eq!(embed_core::hub_commit(&dir).as_deref(), Some(COMMIT_B));
    let (got, dir) = embed("org/pinned", &bert_texts).await;
    assert_cosines("org/pinned (main)", &got, &bert_expected, 0.99999);
    assert_eq!(embed_core::hub_commit(&dir).as_deref(), Some(COMMIT_A));
    let (got, _) = embed(&format!("org/pinned@{COMMIT_B}"), &roberta_texts).await;
    assert_cosines("org/pinned@<commit>", &got, &roberta_expected, 0.99999);
}

/// Collects every log line emitted while it is the default subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_repo_needs_its_token_and_the_token_is_never_shown() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    // The process-wide subscriber (the load runs on the model's own thread), with `log` records
    // (hf-hub's) bridged in; only this test installs one.
    // It captures at TRACE while this test runs and is switched off when it ends (also on a
    // panic), so the tests after it in this binary neither pay for it nor fill its buffer.
    let logs = Captured::default();
    let writer = logs.clone();
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (level, level_handle) = tracing_subscriber::reload::Layer::new(LevelFilter::TRACE);
    tracing_subscriber::registry()
        .with(level)
        .with(tracing_subscriber::fmt::layer().with_writer(move || writer.clone()))
        .try_init()
        .expect("the only subscriber");
    let _off = scopeguard::guard(level_handle, |h| h.reload(LevelFilter::OFF).expect("the subscriber is installed"));

    let token = "hf_standin_secret_4711";
    let hub = StandInHub::start();
    hub.publish("org/gated", "main", COMMIT_A, &fixture_dir("bert"));
    hub.gate("org/gated", token);
    let home = hub_env(&hub);

    let err = load("org/gated").await.expect_err("a gated repo without a token must fail");
    let msg = err.to_string();
    assert!(matches!(err, Error::ModelNotAvailable { .. }), "{err:?}");
    assert!(msg.contains("org/gated") && msg.contains("gated or private") && msg.contains("HF_TOKEN"), "{msg}");
    assert_eq!(live_weight_bytes(), 0);

    // With the token from HF_TOKEN, and from the cache's token file.
    std::env::set_var("HF_TOKEN", token);
    let (texts, expected) = texts_of("bert");
    let (got, _) = embed("org/gated", &texts).await;
    assert_cosines("org/gated with HF_TOKEN", &got, &expected, 0.99999);
    std::env::remove_var("HF_TOKEN");
    let home2 = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home2.path());
    std::fs::write(home2.path().join("token"), format!("{token}\n")).unwrap();
    let (got, _) = embed("org/gated", &texts).await;
    assert_cosines("org/gated with the token file", &got, &expected, 0.99999);
    drop(home);

    assert!(hub.requests().iter().any(|r| r.authorized), "the token was sent");
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logged.contains("org/gated") || logged.contains("downloading"), "the loads logged nothing about the model: the capture is not working:\n{logged}");
    assert!(!logged.contains(token) && !msg.contains(token), "the token leaked into a log line or an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_fails_naming_the_id() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let hub = StandInHub::start();
    hub.publish("org/known", "main", COMMIT_A, &fixture_dir("bert"));
    let _home = hub_env(&hub);
    for source in ["org/no-such-model", "org/known@no-such-branch"] {
        let err = load(source).await.err().unwrap_or_else(|| panic!("{source} loaded"));
        let msg = err.to_string();
        assert!(matches!(err, Error::ModelNotAvailable { .. }) && msg.contains(source), "{msg}");
    }
    // A repo without weights is named too, with what is missing.
    let empty = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture_dir("bert").join(f), empty.path().join(f)).unwrap();
    }
    hub.publish("org/no-weights", "main", COMMIT_A, empty.path());
    let msg = load("org/no-weights").await.err().unwrap().to_string();
    assert!(msg.contains("org/no-weights") && msg.contains("model.safetensors"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pytorch_model_bin_is_fetched_only_where_the_repo_has_no_safetensors() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let hub = StandInHub::start();
    // distilbert with torch.save'd weights only (the encoder's and the Dense module's).
    let bin_only = torch_pickle_fixture();
    hub.publish("org/bin-only", "main", COMMIT_A, bin_only.path());
    // The same model with safetensors and pytorch_model.bin side by side, as older repos have.
    let both = tempfile::tempdir().unwrap();
    copy_model_dir(&fixture_dir("distilbert"), both.path());
    for sub in ["", "2_Dense"] {
        std::fs::copy(bin_only.path().join(sub).join("pytorch_model.bin"), both.path().join(sub).join("pytorch_model.bin")).unwrap();
    }
    hub.publish("org/both", "main", COMMIT_A, both.path());
    let _home = hub_env(&hub);
    let (texts, _) = texts_of("distilbert");
    let (twin, _) = embed(&fixture_dir("distilbert").to_string_lossy(), &texts).await;

    let (got, dir) = embed("org/bin-only", &texts).await;
    assert_max_abs_diff("pytorch_model.bin by hub id vs the safetensors twin", &got, &twin, 0.0);
    assert!(dir.join("pytorch_model.bin").is_file() && dir.join("2_Dense/pytorch_model.bin").is_file(), "{}", dir.display());

    let before = hub.requests().len();
    let (got, dir) = embed("org/both", &texts).await;
    assert_max_abs_diff("safetensors by hub id vs the local fixture", &got, &twin, 0.0);
    let fetched: Vec<String> = hub.requests()[before..].iter().map(|r| r.path.clone()).collect();
    assert!(fetched.iter().any(|p| p.ends_with("/resolve/main/model.safetensors")), "{fetched:?}");
    assert!(fetched.iter().any(|p| p.ends_with("/resolve/main/2_Dense/model.safetensors")), "{fetched:?}");
    assert!(!fetched.iter().any(|p| p.ends_with("pytorch_model.bin")), "a .bin was fetched beside safetensors: {fetched:?}");
    assert!(!dir.join("pytorch_model.bin").exists(), "{}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_the_repo_lacks_are_recorded_and_a_partly_filled_cache_asks_for_the_rest() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let hub = StandInHub::start();
    let fixture = fixture_dir("bert");
    hub.publish("org/bert", "main", COMMIT_A, &fixture);
    let home = hub_env(&hub);
    let (texts, expected) = texts_of("bert");
    let (got, dir) = embed("org/bert", &texts).await;
    assert_cosines("bert by hub id", &got, &expected, 0.99999);

    // Every file asked for that the repo lacks is recorded as huggingface_hub records it; no
    // file the repo has is.
    let no_exist = home.path().join("hub/models--org--bert/.no_exist").join(COMMIT_A);
    let prefix = "/org/bert/resolve/main/";
    let asked: Vec<String> = hub.requests().iter().filter_map(|r| r.path.strip_prefix(prefix).map(str::to_owned)).collect();
    let lacked: Vec<&String> = asked.iter().filter(|f| !fixture.join(f).exists()).collect();
    assert!(lacked.iter().any(|f| *f == "config_sentence_transformers.json") && lacked.iter().any(|f| *f == "2_Normalize/config.json"), "{asked:?}");
    for f in &asked {
        assert_eq!(no_exist.join(f).is_file(), lacked.contains(&f), "{f}: marker under {}", no_exist.display());
    }

    // A cache that lacks a file the repo has (filled in part by another tool): the hub is asked
    // for that file alone, and the model pools as its 1_Pooling/config.json says (CLS), not by
    // the mean it would fall back to without it.
    std::fs::remove_file(dir.join("1_Pooling/config.json")).unwrap();
    let before = hub.requests().len();
    let (again, _) = embed("org/bert", &texts).await;
    let asked: Vec<String> = hub.requests()[before..].iter().map(|r| r.path.clone()).collect();
    // (hf-hub asks for a file's metadata, then for the file.)
    assert!(!asked.is_empty() && asked.iter().all(|p| *p == format!("{prefix}1_Pooling/config.json")), "only the missing file is asked for: {asked:?}");
    assert_max_abs_diff("after refetching the pooling config", &again, &got, 0.0);

    // Fully cached again: no request, with the hub up; and offline with it stopped.
    let before = hub.requests().len();
    embed("org/bert", &texts).await;
    assert_eq!(hub.requests().len(), before, "a fully cached model asked the hub again");
    hub.stop();
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let (offline, _) = embed("org/bert", &texts).await;
    std::env::remove_var("HF_HUB_OFFLINE");
    assert_max_abs_diff("offline from the cache", &offline, &got, 0.0);

    // A cache without the markers (written before they were, or by another tool) and the hub
    // unreachable: the files it lacks cannot be asked about, so it loads what the cache has.
    std::fs::remove_dir_all(home.path().join("hub/models--org--bert/.no_exist")).unwrap();
    let (unreachable, _) = embed("org/bert", &texts).await;
    assert_max_abs_diff("the hub unreachable, a cache without markers", &unreachable, &got, 0.0);
}
