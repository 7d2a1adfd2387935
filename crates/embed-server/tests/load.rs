//! Load test on loopback against the `embed-server` binary with the real MiniLM: 16 and 64
//! concurrent clients for 20 s each (`EMBED_LOAD_SECONDS` overrides). Zero errors other than
//! the designed 429s (the server is started with --max-concurrent 48), server memory flat, and
//! the figures printed: throughput, p50/p99 latency, and the ratio to in-process `embed_texts`
//! throughput with the same request pattern, measured in the same run.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};
use embed_testkit::{minilm_dir, workspace_root};

const TEXTS_PER_REQUEST: usize = 4;

fn corpus() -> Vec<String> {
    std::fs::read_to_string(workspace_root().join("testdata/corpus.txt")).unwrap().lines().map(String::from).collect()
}

fn seconds() -> u64 {
    std::env::var("EMBED_LOAD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20)
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("RssAnon:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

struct Outcome {
    ok: usize,
    rejected: usize,
    other: Vec<String>,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

async fn drive(base: &str, clients: usize, secs: u64, corpus: Arc<Vec<String>>) -> Outcome {
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, stop, corpus, url) = (client.clone(), stop.clone(), corpus.clone(), format!("{base}/embed"));
            tokio::spawn(async move {
                let mut out = (0usize, 0usize, Vec::new(), Vec::new());
                let mut i = c * 97;
                while !stop.load(Ordering::Relaxed) {
                    let inputs: Vec<&String> = (0..TEXTS_PER_REQUEST).map(|k| &corpus[(i + k) % corpus.len()]).collect();
                    i += TEXTS_PER_REQUEST;
                    let t = Instant::now();
                    match client.post(&url).json(&serde_json::json!({ "inputs": inputs })).send().await {
                        Ok(r) if r.status() == 200 => {
                            let v: Vec<Vec<f32>> = r.json().await.unwrap();
                            assert_eq!(v.len(), TEXTS_PER_REQUEST);
                            out.0 += 1;
                            out.3.push(t.elapsed());
                        }
                        Ok(r) if r.status() == 429 => {
                            assert_eq!(r.headers()["retry-after"], "1");
                            out.1 += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Ok(r) => out.2.push(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                        Err(e) => out.2.push(e.to_string()),
                    }
                }
                out
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut o = Outcome { ok: 0, rejected: 0, other: Vec::new(), latencies: Vec::new(), elapsed: Duration::ZERO };
    for t in tasks {
        let (ok, rej, other, lat) = t.await.unwrap();
        o.ok += ok;
        o.rejected += rej;
        o.other.extend(other);
        o.latencies.extend(lat);
    }
    o.elapsed = started.elapsed();
    o.latencies.sort();
    o
}

fn pct(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

/// In-process throughput with the same pattern: `clients` tasks, 4 texts a request.
async fn in_process(clients: usize, secs: u64, corpus: Arc<Vec<String>>) -> f64 {
    let svc = Arc::new(DenseEmbeddingService::from_spec(ModelSpec::new(minilm_dir().to_string_lossy())).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (svc, stop, corpus) = (svc.clone(), stop.clone(), corpus.clone());
            tokio::spawn(async move {
                let (mut n, mut i) = (0usize, c * 97);
                while !stop.load(Ordering::Relaxed) {
                    let inputs: Vec<String> = (0..TEXTS_PER_REQUEST).map(|k| corpus[(i + k) % corpus.len()].clone()).collect();
                    i += TEXTS_PER_REQUEST;
                    svc.embed_texts(&inputs, &EmbedOptions::default()).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0;
    for t in tasks {
        requests += t.await.unwrap();
    }
    let tps = (requests * TEXTS_PER_REQUEST) as f64 / started.elapsed().as_secs_f64();
    svc.cleanup().await.unwrap();
    tps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_and_sixty_four_clients() {
    let secs = seconds();
    let corpus = Arc::new(corpus());
    let model = format!("minilm={}", minilm_dir().display());
    let server = common::Server::start(&["--model", &model, "--max-concurrent", "48", "--max-inputs", "64"]);
    let http = reqwest::Client::new();
    server.wait_ready(&http).await;
    // Warm-up, then the memory baseline (settled, as after each phase).
    drive(&server.base, 16, 2, corpus.clone()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_base = resident_kib(server.pid());
    let mut report = Vec::new();
    for clients in [16usize, 64] {
        let o = drive(&server.base, clients, secs, corpus.clone()).await;
        assert!(o.other.is_empty(), "{clients} clients: unexpected errors: {:?}", &o.other[..o.other.len().min(5)]);
        assert!(o.ok > 0);
        if clients <= 48 {
            assert_eq!(o.rejected, 0, "{clients} clients are within --max-concurrent 48");
        }
        let tps = (o.ok * TEXTS_PER_REQUEST) as f64 / o.elapsed.as_secs_f64();
        // Settled figure: the worker returns freed heap to the OS within a second of going idle.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rss = resident_kib(server.pid());
        let metrics = http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
        let alloc = metrics.lines().find_map(|l| l.strip_prefix("embed_memory_allocator_bytes ")).unwrap_or("?").to_string();
        eprintln!("load: after {clients} clients: allocator in use {alloc} bytes");
        report.push(format!(
            "{clients:>3} clients: {} requests ok, {} designed 429s, {tps:.0} texts/s, p50 {:.1} ms, p99 {:.1} ms, server anonymous RSS {:.1} MiB",
            o.ok, o.rejected, pct(&o.latencies, 0.5), pct(&o.latencies, 0.99), rss as f64 / 1024.0
        ));
        if clients == 16 {
            report.push(format!("__tps16 {tps}"));
        }
    }
    let rss_end = resident_kib(server.pid());
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    let growth = (rss_end as f64 - rss_base as f64) / rss_base as f64;
    let inproc = in_process(16, secs.min(10), corpus).await;
    let tps16: f64 = report.iter().find_map(|l| l.strip_prefix("__tps16 ")).unwrap().parse().unwrap();
    for line in report.iter().filter(|l| !l.starts_with("__")) {
        eprintln!("load: {line}");
    }
    eprintln!(
        "load: in-process embed_texts, 16 tasks: {inproc:.0} texts/s; HTTP/in-process ratio at 16 clients: {:.2}",
        tps16 / inproc
    );
    eprintln!("load: server anonymous RSS {:.1} -> {:.1} MiB ({:+.1}%)", rss_base as f64 / 1024.0, rss_end as f64 / 1024.0, growth * 100.0);
    assert!(growth <= 0.10, "server memory grew {:.1}% under load", growth * 100.0);
}
