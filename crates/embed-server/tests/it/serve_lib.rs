//! `embed_server::serve` in-process with the caller's listener and shutdown future: the pool is
//! released when it returns, and a shutdown delay serves on unready first. (Its own test
//! binary: it asserts process-wide model counts, one test at a time.)

use std::time::Duration;

use embed_core::ModelSpec;
use embed_testkit::TinyModel;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_serve_releases_the_pool() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    use embed_pool::{ModelRegistry, Pool, PoolConfig};
    let (_tmp, dir) = TinyModel::default().write_temp();
    let registry = ModelRegistry::new().with("tiny", ModelSpec::new(dir.to_string_lossy()));
    let state = embed_server::AppState::new(Pool::new(PoolConfig::default(), registry), embed_server::ServerConfig::new("tiny"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(embed_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    loop {
        if client.get(format!("{base}/ready")).send().await.map(|r| r.status() == 200).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(embed_core::memory::live_weight_bytes() > 0);
    for i in 0..20 {
        let r = client.post(format!("{base}/embed")).json(&json!({"inputs": format!("text {i}")})).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    stop.send(()).unwrap();
    let report = server.await.unwrap().unwrap();
    assert!(report.drained);
    assert_eq!(embed_core::memory::live_models(), 0);
    assert_eq!(embed_core::memory::live_weight_bytes(), 0, "memory accounting back to baseline");
}

/// With a shutdown delay the server serves on after it is told to stop: `/ready` answers 503
/// at once (health-checking balancers take it out), requests still succeed and carry
/// `Connection: close`, and only after the delay are new connections refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_delay_serves_on_unready_then_stops_accepting() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    use embed_pool::{ModelRegistry, Pool, PoolConfig};
    use embed_server::{ServerConfig, Timeouts};
    let (_tmp, dir) = TinyModel::default().write_temp();
    let registry = ModelRegistry::new().with("tiny", ModelSpec::new(dir.to_string_lossy()));
    let delay = Duration::from_millis(1500);
    let config = ServerConfig::new("tiny").with_timeouts(Timeouts { shutdown_delay: delay, ..Timeouts::default() });
    let state = embed_server::AppState::new(Pool::new(PoolConfig::default(), registry), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(embed_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    while !client.get(format!("{base}/ready")).send().await.map(|r| r.status() == 200).unwrap_or(false) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = client.post(format!("{base}/embed")).json(&json!({"inputs": "before"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("connection").is_none_or(|v| v != "close"), "keep-alive while serving normally");

    let asked = std::time::Instant::now();
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.get(format!("{base}/ready")).send().await.unwrap().status(), 503, "unready at once");
    let fresh = reqwest::Client::new();
    let r = fresh.post(format!("{base}/embed")).json(&json!({"inputs": "during the delay"})).send().await.unwrap();
    assert_eq!(r.status(), 200, "new connections are still served during the delay");
    assert_eq!(r.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    assert!(asked.elapsed() < delay, "the checks ran inside the delay");

    let report = server.await.unwrap().unwrap();
    assert!(asked.elapsed() >= delay, "serve returned only after the delay");
    assert!(report.drained);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "refused after the delay");
    assert_eq!(embed_core::memory::live_models(), 0);
}
