//! The `embed-server` binary with models given by hub id, against the loopback stand-in for the
//! hub (`embed_testkit::hub`) that the server is pointed at with `HF_ENDPOINT` and a temporary
//! `HF_HOME`: an unknown id (or revision) fails the start with a message naming it, and
//! `/models` and `/info` report the commit each hub revision resolved to.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Server;
use embed_testkit::fixture_dir;
use embed_testkit::hub::StandInHub;
use serde_json::Value;

const COMMIT_A: &str = "0123456789abcdef0123456789abcdef01234567";
const COMMIT_B: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// Points the server's hub client at `hub` with the empty cache `home` and no token.
fn hub_env(cmd: &mut Command, hub: &StandInHub, home: &std::path::Path) {
    cmd.env("HF_ENDPOINT", hub.endpoint()).env("HF_HOME", home);
    for var in ["HF_HUB_OFFLINE", "HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"] {
        cmd.env_remove(var);
    }
}

#[test]
fn a_start_with_an_unknown_hub_id_fails_naming_the_id() {
    let hub = StandInHub::start();
    hub.publish("org/known", "main", COMMIT_A, &fixture_dir("bert"));
    for source in ["org/no-such-model", "org/known@no-such-branch"] {
        let home = tempfile::tempdir().unwrap();
        let mut cmd = common::command(&["--model", &format!("m={source}")]);
        hub_env(&mut cmd, &hub, home.path());
        let out = common::output_within(cmd, Duration::from_secs(60));
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{source}: {log}");
        assert!(log.contains("could not be preloaded") && log.contains(source), "{source}: {log}");
    }
    // The hub was asked (the failure is the hub's answer, not a configuration error).
    assert!(hub.requests().iter().any(|r| r.path.starts_with("/org/no-such-model/")), "{:?}", hub.requests());
    assert!(hub.requests().iter().any(|r| r.path.starts_with("/org/known/resolve/no-such-branch/")), "{:?}", hub.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_info_report_the_resolved_commit() {
    let hub = StandInHub::start();
    hub.publish("org/bert", "main", COMMIT_A, &fixture_dir("bert"));
    hub.publish("org/bert", "v1", COMMIT_B, &fixture_dir("bert"));
    let home = tempfile::tempdir().unwrap();
    let local = format!("local={}", fixture_dir("roberta").display());
    let server = Server::start_with(&["--model", "latest=org/bert", "--model", "pinned=org/bert@v1", "--model", &local], |cmd| {
        hub_env(cmd, &hub, home.path())
    });
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    for name in ["pinned", "local"] {
        let r = client.post(format!("{}/models/{name}/load", server.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}: {}", r.text().await.unwrap());
    }

    let info: Value = client.get(format!("{}/info", server.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["model_sha"], COMMIT_A, "/info of the default model: {info}");
    let models: Value = client.get(format!("{}/models", server.base)).send().await.unwrap().json().await.unwrap();
    let loaded = models["loaded"].as_array().unwrap_or_else(|| panic!("{models}"));
    let sha = |name: &str| {
        let m = loaded.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("{name} not loaded: {models}"));
        m["model_sha"].clone()
    };
    assert_eq!(sha("latest"), COMMIT_A, "{models}");
    assert_eq!(sha("pinned"), COMMIT_B, "{models}");
    assert_eq!(sha("local"), Value::Null, "a local directory has no commit: {models}");
    server.signal(libc::SIGTERM);
    let (code, log) = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(60))).await.unwrap();
    assert_eq!(code, 0, "{log}");
}
