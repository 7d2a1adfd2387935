//! The `embed-server` binary with models given by hub id, against the loopback stand-in for the
//! hub (`embed_testkit::hub`) that the server is pointed at with `HF_ENDPOINT` and a temporary
//! `HF_HOME`: an unknown id (or revision) fails the start with a message naming it, and
//! `/models` and `/info` report the commit each hub revision resolved to.

use crate::common;

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
    let _gate = embed_testkit::module_gate(module_path!());
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
    let _gate = embed_testkit::module_gate(module_path!());
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

/// The container of a Deployment written for TEI (`tests/data/tei-deployment.yaml`: a hub id by
/// `--model-id`, TEI's flags in `args`, its variables in `env`, the HF token from a Secret)
/// starts this server unchanged but for the port: the gated model is fetched with the Secret's
/// token, the probe path answers, `/embed` and `/info` answer as TEI's do, and the token is in
/// no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tei_deployment_manifest_starts_the_server_unchanged() {
    let _gate = embed_testkit::module_gate(module_path!());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tei-deployment.yaml");
    // YAML to JSON with PyYAML (a dependency of transformers in the project's venv).
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing; run `cargo xtask setup`", python.display());
    let json = Command::new(&python)
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let deployment: Value = serde_json::from_slice(&json.stdout).unwrap();
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let container = &containers[0];
    let args: Vec<String> = container["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("string arg").to_string()).collect();
    let model_id = args.iter().skip_while(|a| *a != "--model-id").nth(1).expect("--model-id in args").clone();
    let probe = container["readinessProbe"]["httpGet"]["path"].as_str().expect("readiness path").to_string();

    let token = "hf_manifest_SECRET_7c2e";
    let hub = StandInHub::start();
    hub.publish(&model_id, "main", COMMIT_A, &fixture_dir("bert"));
    hub.gate(&model_id, token);
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embed-server"));
    cmd.args(&args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).env_remove("LD_LIBRARY_PATH");
    hub_env(&mut cmd, &hub, home.path());
    let mut seen = 0;
    for var in container["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("env name");
        let value = match (name, var["value"].as_str()) {
            ("PORT", Some(_)) => "0".to_string(),
            (_, Some(v)) => v.to_string(),
            (_, None) => {
                assert!(var["valueFrom"]["secretKeyRef"].is_object(), "{name}: a value or a Secret");
                token.to_string()
            }
        };
        cmd.env(name, value);
        seen += 1;
    }
    assert_eq!(seen, 5, "the manifest's five variables");
    let server = Server::spawn(cmd);
    let base = server.base.replace("0.0.0.0", "127.0.0.1");
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    while client.get(format!("{base}{probe}")).send().await.map(|r| r.status()).ok() != Some(reqwest::StatusCode::OK) {
        assert!(started.elapsed() < Duration::from_secs(60), "never healthy:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let embed = |body: Value| client.post(format!("{base}/embed")).json(&body).send();
    let r = embed(serde_json::json!({"inputs": ["a first text", "a second text"]})).await.unwrap();
    assert_eq!(r.status(), 200, "{}", server.log());
    let vectors: Vec<Vec<f32>> = r.json().await.unwrap();
    assert_eq!(vectors.len(), 2);
    assert!(vectors.iter().all(|v| !v.is_empty() && v.iter().all(|x| x.is_finite())), "{vectors:?}");
    // --max-client-batch-size 32 from the args.
    let r = embed(serde_json::json!({"inputs": vec!["x"; 33]})).await.unwrap();
    assert_eq!(r.status(), 413, "33 inputs over --max-client-batch-size 32");
    let info: Value = client.get(format!("{base}/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["model_id"], model_id.as_str(), "{info}");
    assert_eq!(info["model_sha"], COMMIT_A, "{info}");
    // The gated files came with the Secret's token.
    assert!(hub.requests().iter().any(|r| r.path.starts_with(&format!("/{model_id}/"))), "{:?}", hub.requests());
    server.signal(libc::SIGTERM);
    let (code, log) = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(60))).await.unwrap();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains(token), "the HF token is in the log:\n{log}");
    // JSON_OUTPUT=true: every log line is a JSON object.
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in lines {
        assert!(serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()), "not a JSON line: {line}");
    }
}
