//! The binary serves every model family by `--model NAME=DIR` and nothing else: each fixture of
//! `testdata/fixtures` answers `/v1/embeddings` with sentence-transformers' vectors, `/models`
//! names each loaded model's family, and `/info` the default model's.

use crate::common;

use std::time::Duration;

use common::Server;
use embed_testkit::{assert_cosines, fixture_dir, fixture_model_type_and_family, fixture_reference, FIXTURES};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_served_by_model_name_and_dir_alone() {
    let _gate = embed_testkit::module_gate(module_path!());
    let entries: Vec<String> = FIXTURES.iter().map(|n| format!("{n}={}", fixture_dir(n).display())).collect();
    let mut args = vec!["--max-models", "16"];
    for e in &entries {
        args.extend(["--model", e.as_str()]);
    }
    let server = Server::start(&args);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    server.wait_ready(&client).await;
    for &name in FIXTURES {
        let items = fixture_reference(name);
        let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
        let r = client
            .post(format!("{}/v1/embeddings", server.base))
            .json(&json!({"model": name, "input": texts}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}: {}", r.text().await.unwrap_or_default());
        let v: Value = r.json().await.unwrap();
        let got: Vec<Vec<f32>> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect();
        let expected: Vec<Vec<f32>> = items.iter().map(|i| i.embedding.clone()).collect();
        assert_cosines(&format!("{name} served vs sentence-transformers"), &got, &expected, 0.99999);
        let tokens: usize = items.iter().map(|i| i.token_count).sum();
        assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(tokens as u64), "{name}: usage");
    }
    let models: Value = client.get(format!("{}/models", server.base)).send().await.unwrap().json().await.unwrap();
    for &name in FIXTURES {
        let entry = models["loaded"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("{name} not loaded: {models}"));
        let (model_type, family) = fixture_model_type_and_family(name);
        assert_eq!(entry["family"], family, "{entry}");
        assert_eq!(entry["architecture"], model_type, "{entry}");
    }
    let info: Value = client.get(format!("{}/info", server.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!((info["family"].as_str(), info["architecture"].as_str()), (Some("bert"), Some(FIXTURES[0])), "{info}");
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
}
