//! `embed_server::serve` in-process with the caller's listener and shutdown future: the pool is
//! released when it returns, and a shutdown delay serves on unready first. (Its own test
//! binary: it asserts process-wide model counts, one test at a time.)

use std::time::Duration;

use serde_json::json;

use crate::common::Served;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_serve_releases_the_pool() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let served = Served::tiny(|c| c).await;
    let (base, client) = (served.base.clone(), reqwest::Client::new());
    assert!(embed_core::memory::live_weight_bytes() > 0);
    for i in 0..20 {
        let r = client.post(format!("{base}/embed")).json(&json!({"inputs": format!("text {i}")})).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let report = served.finish().await;
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
    use embed_server::Timeouts;
    let delay = Duration::from_millis(1500);
    let mut served = Served::tiny(|c| c.with_timeouts(Timeouts { shutdown_delay: delay, ..Timeouts::default() })).await;
    let (base, addr, client) = (served.base.clone(), served.addr, reqwest::Client::new());
    let r = client.post(format!("{base}/embed")).json(&json!({"inputs": "before"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("connection").is_none_or(|v| v != "close"), "keep-alive while serving normally");

    let asked = std::time::Instant::now();
    served.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.get(format!("{base}/ready")).send().await.unwrap().status(), 503, "unready at once");
    let fresh = reqwest::Client::new();
    let r = fresh.post(format!("{base}/embed")).json(&json!({"inputs": "during the delay"})).send().await.unwrap();
    assert_eq!(r.status(), 200, "new connections are still served during the delay");
    assert_eq!(r.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    assert!(asked.elapsed() < delay, "the checks ran inside the delay");

    let report = served.finish().await;
    assert!(asked.elapsed() >= delay, "serve returned only after the delay");
    assert!(report.drained);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "refused after the delay");
    assert_eq!(embed_core::memory::live_models(), 0);
}
