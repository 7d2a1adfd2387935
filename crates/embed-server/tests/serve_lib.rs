//! `embed_server::serve` in-process with the caller's listener and shutdown future: the pool is
//! released when it returns. (Its own test binary: it asserts process-wide model counts.)

use std::time::Duration;

use embed_core::ModelSpec;
use embed_testkit::TinyModel;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_serve_releases_the_pool() {
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
