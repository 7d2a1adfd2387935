//! Load client of `cargo xtask bench --latency`: query latency beside bulk indexing, against a
//! running `embed-server`.
//!
//! One phase per run, printed as one JSON line:
//! - `idle`: one client sends single-text queries one after another (`--queries` of them);
//! - `bulk`: `--bulk-clients` clients send `--per-request` texts per request continuously for
//!   `--seconds`; texts/s;
//! - `mixed`: both at once for `--seconds`: the queries' latencies and the bulk texts/s.
//!
//! With `--query-rate R` the query client of `mixed` starts a query every 1/R s (right after the
//! last answer when that came later) instead of back to back, so two schedulers compared are
//! asked the same query load and their bulk throughputs can be compared; a back-to-back client
//! sends more queries to the one that answers faster, which takes CPU from bulk.
//!
//! Queries go to `/embed` with one text and bulk requests with many, neither naming a priority:
//! the server's default by size applies (one text interactive, 256 bulk). Every answer is
//! checked: one vector per text, all finite, of one dimension; with `--expect PATH` (the
//! vectors an `idle` run wrote with `--write PATH`) each query's vector must match the idle
//! one of the same text at cosine >= 0.99999.
//!
//! usage: latency_bench URL TEXTS_FILE --phase idle|bulk|mixed [--queries N] [--seconds S]
//!        [--bulk-clients N] [--per-request K] [--query-model NAME] [--bulk-model NAME]
//!        [--write PATH] [--expect PATH] [--query-rate R]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Args {
    url: String,
    texts: Vec<String>,
    phase: String,
    queries: usize,
    seconds: f64,
    bulk_clients: usize,
    per_request: usize,
    query_model: Option<String>,
    bulk_model: Option<String>,
    write: Option<String>,
    expect: Option<String>,
    /// Queries per second in `mixed` (None: back to back).
    query_rate: Option<f64>,
}

fn parse() -> Args {
    let usage = "usage: latency_bench URL TEXTS_FILE --phase idle|bulk|mixed [--queries N] [--seconds S] [--bulk-clients N] \
                 [--per-request K] [--query-model NAME] [--bulk-model NAME] [--write PATH] [--expect PATH] [--query-rate R]";
    let mut it = std::env::args().skip(1);
    let url = it.next().expect(usage);
    let path = it.next().expect(usage);
    let texts: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert!(!texts.is_empty(), "{path} holds no texts");
    let mut a = Args {
        url,
        texts,
        phase: String::new(),
        queries: 200,
        seconds: 20.0,
        bulk_clients: 4,
        per_request: 256,
        query_model: None,
        bulk_model: None,
        write: None,
        expect: None,
        query_rate: None,
    };
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value; {usage}"));
        match flag.as_str() {
            "--phase" => a.phase = value,
            "--queries" => a.queries = value.parse().expect("--queries is a number"),
            "--seconds" => a.seconds = value.parse().expect("--seconds is a number"),
            "--bulk-clients" => a.bulk_clients = value.parse().expect("--bulk-clients is a number"),
            "--per-request" => a.per_request = value.parse().expect("--per-request is a number"),
            "--query-model" => a.query_model = Some(value),
            "--bulk-model" => a.bulk_model = Some(value),
            "--write" => a.write = Some(value),
            "--expect" => a.expect = Some(value),
            "--query-rate" => a.query_rate = Some(value.parse().expect("--query-rate is a number")),
            other => panic!("unknown flag {other}; {usage}"),
        }
    }
    assert!(["idle", "bulk", "mixed"].contains(&a.phase.as_str()), "{usage}");
    assert!(a.queries > 0 && a.bulk_clients > 0 && a.per_request > 0 && a.seconds > 0.0, "{usage}");
    assert!(a.query_rate.is_none_or(|r| r > 0.0 && r.is_finite()), "--query-rate must be positive; {usage}");
    a
}

/// Posts `texts` to `/embed`; checks and returns the vectors.
async fn embed(client: &reqwest::Client, url: &str, model: Option<&str>, texts: &[String]) -> Vec<Vec<f32>> {
    let mut body = json!({ "inputs": texts });
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    let resp = client.post(format!("{url}/embed")).json(&body).send().await.expect("request sent");
    let status = resp.status();
    let text = resp.text().await.expect("response read");
    assert!(status.is_success(), "/embed answered {status}: {text}");
    let vectors: Vec<Vec<f32>> = serde_json::from_str(&text).expect("/embed answers a list of vectors");
    assert_eq!(vectors.len(), texts.len(), "one vector per text");
    let dim = vectors.first().map_or(0, Vec::len);
    assert!(dim > 0, "empty vectors");
    for v in &vectors {
        assert_eq!(v.len(), dim, "vectors of different dimensions");
        assert!(v.iter().all(|x| x.is_finite()), "a vector holds NaN or infinity");
    }
    vectors
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vectors of different dimensions");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// One client sending single-text queries back to back (or `rate` per second), `count` of them
/// or until `stop`.
async fn queries(
    client: reqwest::Client,
    a: Arc<Args>,
    count: Option<usize>,
    stop: Arc<AtomicBool>,
    expect: Option<Arc<Vec<Vec<f32>>>>,
    rate: Option<f64>,
) -> (Vec<f64>, Vec<Vec<f32>>, f64) {
    let (mut latencies, mut vectors, mut worst) = (Vec::new(), Vec::new(), 1.0f64);
    let mut i = 0;
    let mut next = tokio::time::Instant::now();
    while count.is_none_or(|n| i < n) && !stop.load(Ordering::Relaxed) {
        if let Some(rate) = rate {
            tokio::time::sleep_until(next).await;
            next = (next + Duration::from_secs_f64(1.0 / rate)).max(tokio::time::Instant::now());
        }
        // With idle vectors to match, only the texts they cover.
        let cycle = expect.as_ref().map_or(a.texts.len(), |e| e.len().min(a.texts.len()));
        let text = a.texts[i % cycle].clone();
        let started = Instant::now();
        let mut v = embed(&client, &a.url, a.query_model.as_deref(), std::slice::from_ref(&text)).await;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        let v = v.remove(0);
        if let Some(expect) = &expect {
            let c = cosine(&v, &expect[i % cycle]);
            assert!(c >= 0.99999, "query {i}: cosine {c} against the idle vector of the same text");
            worst = worst.min(c);
        }
        vectors.push(v);
        i += 1;
    }
    (latencies, vectors, worst)
}

/// `clients` clients sending `per_request` texts per request until `stop`; texts embedded.
async fn bulk(client: &reqwest::Client, a: &Arc<Args>, stop: &Arc<AtomicBool>, done: &Arc<AtomicUsize>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..a.bulk_clients)
        .map(|c| {
            let (client, a, stop, done) = (client.clone(), a.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut at = c * a.per_request * 7;
                while !stop.load(Ordering::Relaxed) {
                    let texts: Vec<String> = (0..a.per_request).map(|k| a.texts[(at + k) % a.texts.len()].clone()).collect();
                    at += a.per_request;
                    embed(&client, &a.url, a.bulk_model.as_deref(), &texts).await;
                    // Only requests that finished inside the window count.
                    if !stop.load(Ordering::Relaxed) {
                        done.fetch_add(texts.len(), Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let a = Arc::new(parse());
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).timeout(Duration::from_secs(600)).build().expect("client");
    let expect: Option<Arc<Vec<Vec<f32>>>> = a.expect.as_ref().map(|p| {
        Arc::new(serde_json::from_str(&std::fs::read_to_string(p).expect("reading --expect")).expect("--expect holds vectors"))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let out: Value = match a.phase.as_str() {
        "idle" => {
            // Warm-up: the first requests pay for connection set-up and first-touch allocations.
            let _ = queries(client.clone(), a.clone(), Some(10), stop.clone(), None, None).await;
            let (mut lat, vectors, _) = queries(client.clone(), a.clone(), Some(a.queries), stop.clone(), None, None).await;
            if let Some(p) = &a.write {
                std::fs::write(p, serde_json::to_string(&vectors).expect("vectors serialize")).expect("writing --write");
            }
            lat.sort_by(f64::total_cmp);
            json!({"phase": "idle", "queries": lat.len(), "p50_ms": percentile(&lat, 50.0), "p99_ms": percentile(&lat, 99.0)})
        }
        phase => {
            let done = Arc::new(AtomicUsize::new(0));
            let clients = bulk(&client, &a, &stop, &done).await;
            // Let every bulk client get a request in before measuring.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let base = done.load(Ordering::Relaxed);
            let started = Instant::now();
            let q = (phase == "mixed").then(|| tokio::spawn(queries(client.clone(), a.clone(), None, stop.clone(), expect.clone(), a.query_rate)));
            tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
            let texts = done.load(Ordering::Relaxed) - base;
            let elapsed = started.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let (mut lat, _, worst) = match q {
                Some(q) => q.await.expect("query client"),
                None => (Vec::new(), Vec::new(), f64::NAN),
            };
            for c in clients {
                c.await.expect("bulk client");
            }
            lat.sort_by(f64::total_cmp);
            json!({
                "phase": phase, "seconds": elapsed, "bulk_texts_per_s": texts as f64 / elapsed,
                "queries": lat.len(), "p50_ms": percentile(&lat, 50.0), "p99_ms": percentile(&lat, 99.0),
                "worst_query_cosine_vs_idle": worst, "query_rate": a.query_rate.filter(|_| phase == "mixed"),
            })
        }
    };
    println!("{out}");
}
