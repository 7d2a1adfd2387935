//! The decoder-reranker kind in the pool: a Qwen3-Reranker served as a causal LM
//! (`ModelOptions::llm_reranker`) and its seq-cls conversion (recognised from its config), beside
//! a cross-encoder, in a one-slot pool with the warm tier on. Each lease scores the fixture's
//! reference pairs (`testdata/fixtures/qwen3-reranker*`, written by
//! `python/make_reranker_fixtures.py`) within 1e-4 of transformers; evictions move the weights to
//! the warm tier and gets restore them, with the same scores bitwise; live weights are exactly the
//! leased model's, and nothing is live once the pool closes. The CUDA variant is in `pool_cuda.rs`
//! (run by `scripts/gpu-check.sh`).

use embed_core::memory::{live_models, live_weight_bytes};
use embed_core::{DeviceSpec, EmbedOptions, Error, LlmReranker, ModelKind, ModelOptions, ModelSpec};
use embed_pool::{HostBudget, ModelRegistry, Pool, PoolConfig, WarmMode, WarmTier};
use embed_testkit::{fixture_dir, serial};
use serde_json::Value;

const CAUSAL: &str = "qwen3-reranker";
const SEQ_CLS: &str = "qwen3-reranker-seq-cls";

/// The reference's first group under the default instruction: its query, documents and logits.
fn default_group(name: &str) -> (String, Vec<String>, Vec<f32>) {
    let v: Value = serde_json::from_slice(&std::fs::read(fixture_dir(name).join("reference.json")).unwrap()).unwrap();
    let items: Vec<&Value> = v["items"].as_array().expect("items").iter().filter(|i| i["instruction"].is_null()).collect();
    let query = items.first().expect("items under the default instruction")["query"].as_str().unwrap().to_string();
    let group: Vec<&&Value> = items.iter().filter(|i| i["query"] == query.as_str()).collect();
    let texts = group.iter().map(|i| i["text"].as_str().unwrap().to_string()).collect();
    let logits = group.iter().map(|i| i["logits"][0].as_f64().unwrap() as f32).collect();
    (query, texts, logits)
}

fn registry(device: DeviceSpec) -> ModelRegistry {
    let spec = |name: &str| {
        let mut options = ModelOptions::default();
        options.device = device;
        options.llm_reranker = (name == CAUSAL).then(LlmReranker::qwen3);
        ModelSpec::new(fixture_dir(name).to_string_lossy()).named(name).with_options(options)
    };
    ModelRegistry::new().with("llm", spec(CAUSAL)).with("seq-cls", spec(SEQ_CLS)).with("cross", spec("bert-reranker"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}

/// Three rounds over the three models in a one-slot pool: each get evicts the model before it
/// to the warm tier and restores its own copy from there after the first round.
async fn cycle(device: DeviceSpec, warm: WarmTier) {
    let pool = Pool::new(PoolConfig::default().with_max_models(1).with_warm_tier(warm), registry(device));
    let opts = EmbedOptions::default();
    let mut first: std::collections::HashMap<&str, Vec<Vec<f32>>> = Default::default();
    let mut scored = 0;
    let mut loaded: std::collections::BTreeMap<&str, u64> = Default::default();
    for round in 0..3 {
        for (name, fixture) in [("llm", CAUSAL), ("cross", "bert-reranker"), ("seq-cls", SEQ_CLS)] {
            let lease = pool.get(name).await.unwrap_or_else(|e| panic!("round {round}: get {name}: {e}"));
            let info = lease.info().unwrap();
            assert_eq!(info.kind, ModelKind::Reranker, "{name}");
            let logits = if fixture == "bert-reranker" {
                let out = lease.tasks_for("rerank").unwrap().rerank("a query", &["one text".to_string(), "another".to_string()], &opts).await.unwrap();
                // A cross-encoder has no instruction prompt.
                let mut ask = EmbedOptions::default();
                ask.instruction = Some("x".into());
                assert!(matches!(lease.tasks_for("rerank").unwrap().rerank("q", &["t".to_string()], &ask).await, Err(Error::InvalidOption { name: "instruction", .. })));
                out.logits
            } else {
                let (query, texts, reference) = default_group(fixture);
                assert!(texts.len() >= 2, "{fixture}: a group of documents");
                let out = lease.tasks_for("rerank").unwrap().rerank(&query, &texts, &opts).await.unwrap();
                let got: Vec<f32> = out.logits.iter().map(|l| l[0]).collect();
                let d = max_abs_diff(&got, &reference);
                assert!(d <= 1e-4, "round {round}: {name}: worst logit difference {d} to transformers");
                // The LLM reranker does not embed.
                assert!(matches!(lease.embed_texts(&texts, &opts).await, Err(Error::WrongKind { kind: ModelKind::Reranker, .. })));
                out.logits
            };
            // After a round trip through the warm tier the weights are the same tensors: the same logits, bitwise.
            match first.get(name) {
                Some(before) => assert_eq!(&logits, before, "round {round}: {name} after a restore"),
                None => drop(first.insert(name, logits)),
            }
            scored += 1;
            // Warm models stay loaded (their weights in host memory): every model seen so far is
            // live, with exactly its weight bytes.
            loaded.insert(name, info.weight_bytes);
            assert_eq!((live_models(), live_weight_bytes()), (loaded.len(), loaded.values().sum()), "round {round}: {name}");
            drop(lease);
        }
    }
    assert_eq!(scored, 9);
    let stats = pool.stats();
    assert!(stats.offloads >= 6 && stats.restores >= 6, "every get after the first round restores from the warm tier: {stats:?}");
    pool.close().await;
    assert_eq!((live_models(), live_weight_bytes()), (0, 0), "nothing live after close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_rerankers_cycle_through_the_warm_tier_and_leave_nothing_behind() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    // CPU models go warm only under `always`; room for all three small models.
    cycle(DeviceSpec::Cpu, WarmTier { mode: WarmMode::Always, host_budget: HostBudget::Bytes(64 << 20) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_warm_tier_each_swap_frees_the_llm_reranker_exactly() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let pool = Pool::new(PoolConfig::default().with_max_models(1), registry(DeviceSpec::Cpu));
    let opts = EmbedOptions::default();
    for round in 0..2 {
        for name in ["llm", "seq-cls", "cross"] {
            let lease = pool.get(name).await.unwrap();
            let info = lease.info().unwrap();
            drop(lease.tasks_for("rerank").unwrap().rerank("q", &["a document".to_string()], &opts).await.unwrap());
            // Only this model is live: the one before it was unloaded and freed to the byte.
            assert_eq!((live_models(), live_weight_bytes()), (1, info.weight_bytes), "round {round}: {name}");
        }
    }
    pool.close().await;
    assert_eq!((live_models(), live_weight_bytes()), (0, 0));
}
