//! The child process of `cargo xtask leak-check`: exercises one layer for N cycles and prints
//! one JSON line with its memory figures and verdict.
//!
//! `leak_check <core|scoped|pool|server> [--cycles N] [--device cpu|cuda]`

use std::time::Duration;

use embed_core::memory::{self, MemorySnapshot};
use embed_core::{DeviceSpec, EmbedOptions, EmbeddingService, ModelOptions, ModelSpec, Offload};
use embed_pool::{HostBudget, ModelRegistry, ModelSettings, Pool, PoolConfig, UnloadMode, WarmMode, WarmTier};
use embed_testkit::{fixture_dir, minilm_dir, reference, TinyModel};

struct Args {
    write_model: Option<String>,
    layer: String,
    cycles: usize,
    device: DeviceSpec,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).cloned();
    Args {
        write_model: get("--write-model"),
        layer: a.first().cloned().unwrap_or_else(|| "core".into()),
        cycles: get("--cycles").and_then(|s| s.parse().ok()).unwrap_or(5),
        device: get("--device").map(|d| d.parse().expect("device")).unwrap_or(DeviceSpec::Cpu),
    }
}

/// The model the layers churn: the real MiniLM, or with `EMBED_LEAK_MODEL_DIR` another directory
/// (the GPU script writes a MiniLM-shaped random model there, so no weights travel).
fn spec(device: DeviceSpec) -> ModelSpec {
    let dir = std::env::var("EMBED_LEAK_MODEL_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| minilm_dir());
    ModelSpec::new(dir.to_string_lossy()).named("minilm").with_options(ModelOptions::default().with_device(device))
}

fn texts() -> Vec<String> {
    if std::env::var_os("EMBED_LEAK_MODEL_DIR").is_some() {
        return (0..38).map(|i| format!("leak check text number {i} ").repeat(1 + i % 7)).collect();
    }
    reference().into_iter().map(|r| r.text).collect()
}

/// Samples memory after the worker threads are gone and freed heap is returned to the OS.
async fn sample() -> MemorySnapshot {
    for _ in 0..500 {
        if memory::live_models() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    memory::trim_cpu_heap();
    MemorySnapshot::now()
}

async fn core_cycle(device: DeviceSpec, peak: &mut MemorySnapshot) {
    let svc = embed_core::DenseEmbeddingService::from_spec(spec(device)).await.expect("load");
    let before = svc.embed_texts(&texts(), &EmbedOptions::default()).await.expect("embed").vectors;
    note_peak(peak);
    // The warm tier's moves: offload and restore, and a request that restores.
    svc.offload().await.expect("offload");
    note_peak(peak);
    svc.restore().await.expect("restore");
    svc.offload().await.expect("offload");
    let after = svc.embed_texts(&texts(), &EmbedOptions::default()).await.expect("embed after offload").vectors;
    assert_eq!(before, after, "vectors changed across an offload and restore");
    // Released on its device (the planted leak's build keeps a weight of this one alive).
    svc.cleanup().await.expect("cleanup");
    // Released while offloaded: its host copy must go with it.
    let svc = embed_core::DenseEmbeddingService::from_spec(spec(device)).await.expect("load");
    svc.offload().await.expect("offload");
    svc.cleanup().await.expect("cleanup");
    // bf16 (on the CPU its linear weights are prepacked for oneDNN: opaque tensors of their own).
    let mut bf16 = spec(device);
    bf16.options.dtype = Some(embed_core::DType::Bf16);
    let svc = embed_core::DenseEmbeddingService::from_spec(bf16).await.expect("load bf16");
    svc.embed_texts(&texts(), &EmbedOptions::default()).await.expect("embed bf16");
    note_peak(peak);
    svc.cleanup().await.expect("cleanup");
    // int8: on a CPU with VNNI quantized, prepacked weights and the calibration pass's buffers;
    // on CUDA (and other CPUs) weight-only int8.
    {
        let mut int8 = spec(device);
        int8.options.dtype = Some(embed_core::DType::Int8);
        let svc = embed_core::DenseEmbeddingService::from_spec(int8).await.expect("load int8");
        svc.embed_texts(&texts(), &EmbedOptions::default()).await.expect("embed int8");
        note_peak(peak);
        svc.cleanup().await.expect("cleanup");
    }
}

async fn scoped_cycle(device: DeviceSpec, peak: &mut MemorySnapshot) {
    let t = texts();
    embed_scoped::scope(spec(device), |svc| async move { svc.embed_texts(&t, &EmbedOptions::default()).await })
        .await
        .expect("ok scope");
    let err = embed_scoped::scope(spec(device), |_svc| async move { Err::<(), _>("planned failure") }).await;
    assert!(err.is_err());
    let panicked = tokio::spawn(embed_scoped::scope(spec(device), |svc| async move {
        svc.embed_texts(&["x".to_string()], &EmbedOptions::default()).await.unwrap();
        panic!("planned panic");
        #[allow(unreachable_code)]
        Ok::<(), embed_core::Error>(())
    }))
    .await;
    assert!(panicked.unwrap_err().is_panic());
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    let cancelled = tokio::spawn(embed_scoped::scope(spec(device), |_svc| async move {
        let _ = loaded_tx.send(());
        std::future::pending::<()>().await;
        Ok::<(), embed_core::Error>(())
    }));
    loaded_rx.await.expect("scope body started");
    note_peak(peak);
    cancelled.abort();
    let _ = cancelled.await;
}

async fn pool_cycle(device: DeviceSpec, tiny: &std::path::Path, peak: &mut MemorySnapshot) {
    let fixture = |name: &str| ModelSpec::new(fixture_dir(name).to_string_lossy()).with_options(ModelOptions::default().with_device(device));
    let registry = ModelRegistry::new()
        .with("minilm", spec(device))
        .with_settings(
            "tiny",
            ModelSpec::new(tiny.to_string_lossy()).with_options(ModelOptions::default().with_device(device)),
            ModelSettings::default().with_ttl(Duration::from_millis(50)),
        )
        // A cross-encoder, an LLM reranker (both forms), a SPLADE encoder, BGE-M3 (three heads) and a
        // PyLate ColBERT model churn beside the embedders.
        .with("reranker", fixture("bert-reranker"))
        .with("llm-reranker", {
            let spec = fixture("qwen3-reranker");
            let options = spec.options.clone().with_llm_reranker(embed_core::LlmReranker::qwen3());
            spec.with_options(options)
        })
        // Its seq-cls conversion, recognised from its config (the seq-cls head's load path).
        .with("llm-reranker-seq-cls", fixture("qwen3-reranker-seq-cls"))
        .with("splade", fixture("bert-splade"))
        .with("m3", fixture("xlm-roberta-m3"))
        .with("colbert", fixture("bert-colbert"));
    // The warm tier on, CPU models too, with room for the MiniLM's copy (90 MB) beside a small
    // one: evictions go warm, gets restore, and the host budget unloads the least recently used
    // warm models. (Before this child froze its malloc thresholds, a MiniLM copy held here made
    // anonymous RSS step by up to 30 MiB on fresh machines, allocator flat, and the budget was
    // cut to the small models.)
    let warm = WarmTier { mode: WarmMode::Always, host_budget: HostBudget::Bytes(120 << 20) };
    let pool = Pool::new(PoolConfig::default().with_max_models(2).with_warm_tier(warm), registry);
    let churn = vec!["churn".to_string(), "a second text to score".to_string()];
    let opts = EmbedOptions::default();
    for _ in 0..3 {
        for name in ["minilm", "reranker", "tiny", "llm-reranker", "llm-reranker-seq-cls", "splade", "m3", "colbert"] {
            let lease = pool.get(name).await.expect("lease");
            match name {
                "reranker" | "llm-reranker-seq-cls" => drop(lease.tasks_for("rerank").unwrap().rerank("a query", &churn, &opts).await.expect("rerank")),
                "llm-reranker" => {
                    let ask = EmbedOptions::default().with_instruction("Find the passage");
                    drop(lease.tasks_for("rerank").unwrap().rerank("a query", &churn, &ask).await.expect("LLM rerank"))
                }
                "splade" => drop(lease.tasks_for("embed_sparse").unwrap().embed_sparse(&churn, &opts).await.expect("embed_sparse")),
                "m3" => {
                    drop(lease.embed_texts(&churn, &opts).await.expect("M3 dense"));
                    drop(lease.tasks_for("embed_sparse").unwrap().embed_sparse(&churn, &opts).await.expect("M3 sparse"));
                    drop(lease.tasks_for("embed_multi").unwrap().embed_multi(&churn, &opts).await.expect("M3 multi-vector"));
                }
                "colbert" => drop(lease.tasks_for("rerank").unwrap().rerank("a query", &churn, &opts).await.expect("MaxSim rerank")),
                _ => drop(lease.embed_texts(&churn, &opts).await.expect("embed")),
            }
            note_peak(peak);
        }
    }
    // TTL expiry of the idle tiny model.
    tokio::time::sleep(Duration::from_millis(80)).await;
    pool.evict_expired().await;
    pool.preload("minilm").await.expect("preload");
    pool.unload("minilm", UnloadMode::WaitForLeases).await.expect("unload");
    let stats = pool.stats();
    assert!(stats.offloads > 0 && stats.restores > 0, "the pool layer must churn the warm tier: {stats:?}");
    pool.close().await;
}

async fn server_cycle(device: DeviceSpec, peak: &mut MemorySnapshot) {
    let registry = ModelRegistry::new().with("minilm", spec(device));
    let state = embed_server::AppState::new(Pool::new(PoolConfig::default(), registry), embed_server::ServerConfig::new("minilm"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(embed_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    while !client.get(format!("{base}/ready")).send().await.map(|r| r.status() == 200).unwrap_or(false) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = serde_json::json!({"inputs": texts()});
    for _ in 0..3 {
        let r = client.post(format!("{base}/embed")).json(&body).send().await.expect("embed request");
        assert_eq!(r.status(), 200);
    }
    note_peak(peak);
    assert_eq!(client.post(format!("{base}/models/minilm/unload")).send().await.unwrap().status(), 200);
    assert_eq!(client.post(format!("{base}/models/minilm/load")).send().await.unwrap().status(), 200);
    let r = client.post(format!("{base}/v1/embeddings")).json(&serde_json::json!({"input": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    stop.send(()).unwrap();
    let report = server.await.unwrap().expect("serve");
    assert!(report.drained);
}

fn note_peak(peak: &mut MemorySnapshot) {
    let now = MemorySnapshot::now();
    peak.resident_anon = peak.resident_anon.max(now.resident_anon);
    peak.cpu_allocator = peak.cpu_allocator.max(now.cpu_allocator);
    peak.model_weights = peak.model_weights.max(now.model_weights);
    if let Some(c) = now.cuda {
        let p = peak.cuda.get_or_insert(c);
        p.allocated = p.allocated.max(c.allocated);
        p.reserved = p.reserved.max(c.reserved);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Freed memory goes back to the OS at once, so anonymous RSS shows what is retained rather
    // than glibc's arena hysteresis (see `freeze_malloc_thresholds`).
    assert!(memory::freeze_malloc_thresholds(128 << 10), "glibc refused mallopt");
    let a = args();
    if matches!(a.device, DeviceSpec::Cuda(_)) && embed_core::cuda_device_count() == 0 {
        eprintln!("--device cuda asked for, but libtorch sees no CUDA device");
        std::process::exit(2);
    }
    let (_tmp, tiny) = TinyModel::default().write_temp();
    if let Some(dir) = a.write_model.as_deref() {
        // `--write-model DIR`: write a MiniLM-shaped random model and exit (used by the GPU script).
        TinyModel::minilm_shaped().write(std::path::Path::new(dir));
        return;
    }
    let mut peak = MemorySnapshot::default();
    let mut after = Vec::new();
    let mut offloaded_after = 0;
    // Cycle 0 is the warm-up: allocator pools, thread pools, lazily loaded kernels.
    for cycle in 0..=a.cycles {
        match a.layer.as_str() {
            "core" => core_cycle(a.device, &mut peak).await,
            "scoped" => scoped_cycle(a.device, &mut peak).await,
            "pool" => pool_cycle(a.device, &tiny, &mut peak).await,
            "server" => server_cycle(a.device, &mut peak).await,
            other => {
                eprintln!("unknown layer {other:?}");
                std::process::exit(2);
            }
        }
        let s = sample().await;
        offloaded_after = offloaded_after.max(memory::offloaded_host_bytes());
        eprintln!("{} cycle {cycle}: anonymous resident {} allocator {} live {}", a.layer, s.resident_anon, s.cpu_allocator, s.live_models);
        after.push(s);
    }
    let base = after[0];
    let last = *after.last().unwrap();
    // `null` when no cycle followed the warm-up: the verdict then has nothing to pass.
    let max_after = |f: fn(&MemorySnapshot) -> u64| after.iter().skip(1).map(f).max();
    let cuda = |s: &MemorySnapshot, f: fn(&memory::CudaMemoryStats) -> u64| s.cuda.as_ref().map(f);
    let json = serde_json::json!({
        "layer": a.layer,
        "device": a.device.to_string(),
        "cycles": a.cycles,
        "baseline": {"resident": base.resident_anon, "allocator": base.cpu_allocator,
                      "cuda_allocated": cuda(&base, |c| c.allocated), "cuda_reserved": cuda(&base, |c| c.reserved),
                      "cuda_used": cuda(&base, |c| c.device_total - c.device_free)},
        "peak": {"resident": peak.resident_anon, "allocator": peak.cpu_allocator, "weights": peak.model_weights,
                  "cuda_allocated": peak.cuda.map(|c| c.allocated), "cuda_reserved": peak.cuda.map(|c| c.reserved)},
        "after": {"resident": last.resident_anon, "allocator": last.cpu_allocator,
                   "cuda_allocated": cuda(&last, |c| c.allocated), "cuda_reserved": cuda(&last, |c| c.reserved),
                   "cuda_used": cuda(&last, |c| c.device_total - c.device_free)},
        "max_after": {"resident": max_after(|s| s.resident_anon), "allocator": max_after(|s| s.cpu_allocator)},
        "live_models_after": after.iter().map(|s| s.live_models).max().unwrap_or(0),
        "weights_after": after.iter().map(|s| s.model_weights).max().unwrap_or(0),
        "offloaded_after": offloaded_after,
        "cuda_allocated_after": after.iter().filter_map(|s| s.cuda.map(|c| c.allocated)).collect::<Vec<_>>(),
        "cuda_reserved_after": after.iter().filter_map(|s| s.cuda.map(|c| c.reserved)).collect::<Vec<_>>(),
    });
    println!("{json}");
}
