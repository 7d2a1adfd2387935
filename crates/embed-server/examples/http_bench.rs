//! Load client of the GPU benchmark (`scripts/gpu-bench.sh`): sends every text of a file to a
//! running `embed-server` exactly once per round, over `/v1/embeddings` with base64 vectors,
//! from N concurrent keep-alive clients, and prints one JSON line per round (texts/s).
//! With `--vectors PATH` the last round's vectors are written in input order as raw
//! little-endian f32, so the caller can compare them with a reference.
//!
//! usage: http_bench URL TEXTS_FILE --clients N --per-request K [--rounds R] [--model NAME] [--vectors PATH]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;

struct Args {
    url: String,
    texts: String,
    clients: usize,
    per_request: usize,
    rounds: usize,
    model: Option<String>,
    vectors: Option<String>,
}

fn parse() -> Args {
    let mut it = std::env::args().skip(1);
    let usage = "usage: http_bench URL TEXTS_FILE --clients N --per-request K [--rounds R] [--model NAME] [--vectors PATH]";
    let url = it.next().expect(usage);
    let texts = it.next().expect(usage);
    let mut a = Args { url, texts, clients: 8, per_request: 32, rounds: 3, model: None, vectors: None };
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value; {usage}"));
        match flag.as_str() {
            "--clients" => a.clients = value.parse().expect("--clients is a number"),
            "--per-request" => a.per_request = value.parse().expect("--per-request is a number"),
            "--rounds" => a.rounds = value.parse().expect("--rounds is a number"),
            "--model" => a.model = Some(value),
            "--vectors" => a.vectors = Some(value),
            other => panic!("unknown flag {other}; {usage}"),
        }
    }
    assert!(a.clients > 0 && a.per_request > 0 && a.rounds > 0, "{usage}");
    a
}

/// Sends every chunk once; returns the vectors in input order.
async fn round(client: &reqwest::Client, a: &Args, chunks: &Arc<Vec<Vec<String>>>) -> Vec<Vec<f32>> {
    let next = Arc::new(AtomicUsize::new(0));
    let endpoint = format!("{}/v1/embeddings", a.url);
    let tasks: Vec<_> = (0..a.clients)
        .map(|_| {
            let (client, next, chunks, endpoint, model) =
                (client.clone(), next.clone(), chunks.clone(), endpoint.clone(), a.model.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(chunk) = chunks.get(i) else { break };
                    let mut body = serde_json::json!({ "input": chunk, "encoding_format": "base64" });
                    if let Some(m) = &model {
                        body["model"] = serde_json::json!(m);
                    }
                    let resp = client.post(&endpoint).json(&body).send().await.expect("request sent");
                    let status = resp.status();
                    let v: serde_json::Value = resp.json().await.expect("JSON answer");
                    assert!(status.is_success(), "HTTP {status}: {v}");
                    let data = v["data"].as_array().expect("data array");
                    assert_eq!(data.len(), chunk.len(), "one vector per input");
                    let rows: Vec<Vec<f32>> = data
                        .iter()
                        .map(|d| {
                            let raw = base64::engine::general_purpose::STANDARD
                                .decode(d["embedding"].as_str().expect("base64 embedding"))
                                .expect("valid base64");
                            raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                        })
                        .collect();
                    got.push((i, rows));
                }
                got
            })
        })
        .collect();
    let mut by_chunk: Vec<Vec<Vec<f32>>> = vec![Vec::new(); chunks.len()];
    for t in tasks {
        for (i, rows) in t.await.expect("client task") {
            by_chunk[i] = rows;
        }
    }
    by_chunk.into_iter().flatten().collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let a = parse();
    let texts: Vec<String> = std::fs::read_to_string(&a.texts)
        .expect("texts file")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    let chunks: Arc<Vec<Vec<String>>> = Arc::new(texts.chunks(a.per_request).map(<[String]>::to_vec).collect());
    let client = reqwest::Client::builder().pool_max_idle_per_host(a.clients).build().expect("client");
    // Warm-up: one pass over a slice, so connections exist and the server's first-batch costs are paid.
    let warm = Arc::new(chunks.iter().take(a.clients.max(4)).cloned().collect::<Vec<_>>());
    round(&client, &a, &warm).await;
    let mut last = Vec::new();
    for r in 0..a.rounds {
        let t = Instant::now();
        last = round(&client, &a, &chunks).await;
        let s = t.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "round": r, "texts": texts.len(), "clients": a.clients, "per_request": a.per_request,
                "seconds": s, "texts_per_s": texts.len() as f64 / s,
            })
        );
    }
    assert_eq!(last.len(), texts.len(), "one vector per text");
    if let Some(path) = &a.vectors {
        let bytes: Vec<u8> = last.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(path, bytes).expect("write vectors");
    }
}
