//! text-embeddings-inference's routes beyond `/embed` (part of the `tasks` test binary, whose
//! fixtures cover every model kind): `/similarity`, SageMaker's `/invocations` and `/ping`,
//! `/embeddings`, Vertex AI's `/vertex`, and Cohere's `/v2/embed`. Answers are checked against
//! the routes they stand for, against cosines computed here, and (for Cohere's quantized
//! encodings) against the float vectors quantized here; errors by status, shape and field.

use axum::http::StatusCode;
use base64::Engine;
use embed_core::{FaultInjection, ModelSpec};
use embed_server::{Limits, ServerConfig};
use embed_testkit::TinyModel;
use serde_json::{json, Value};

use super::common::inproc::{self, send};
use super::{app, post};

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// `a` and `b` are the same JSON, numbers equal within `tol` (batched together or apart, a
/// vector's last digits may differ).
#[track_caller]
fn assert_close(a: &Value, b: &Value, tol: f64, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= tol, "{at}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths differ");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_close(x, y, tol, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{at}: fields differ");
            for (k, v) in x {
                assert_close(v, &y[k], tol, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[track_caller]
fn assert_tei_error(v: &Value, status: StatusCode, want: StatusCode, needle: &str) {
    assert_eq!(status, want, "{v}");
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("not a TEI error: {v}"));
    assert!(v["error_type"].is_string(), "{v}");
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similarity_is_the_cosine_of_the_embeddings() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("bert");
    let source = "a cat sat on the mat";
    let sentences = ["the cat is on the mat", "stock markets fell sharply today", "mat", "a dog chased the cat"];
    let all: Vec<&str> = std::iter::once(source).chain(sentences).collect();
    let (status, embedded) = post(&app, "/embed", json!({"inputs": all})).await;
    assert_eq!(status, 200, "{embedded}");
    let vectors: Vec<Vec<f64>> = embedded.as_array().unwrap().iter().map(floats).collect();
    let expected: Vec<f64> = vectors[1..].iter().map(|v| cosine(&vectors[0], v)).collect();
    assert!(expected.windows(2).all(|w| (w[0] - w[1]).abs() > 1e-3), "the sentences should differ: {expected:?}");

    let body = json!({"inputs": {"source_sentence": source, "sentences": sentences}});
    let (status, v) = post(&app, "/similarity", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let got = floats(&v);
    assert_eq!(got.len(), sentences.len(), "{v}");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!((g - e).abs() < 1e-5, "sentence {i}: {g} vs cosine {e}");
    }
    // TEI's `parameters`, and the `model` extension.
    let with_parameters = json!({
        "model": "bert",
        "inputs": {"source_sentence": source, "sentences": sentences},
        "parameters": {"truncate": true, "truncation_direction": "Right", "prompt_name": null},
    });
    let (status, v) = post(&app, "/similarity", with_parameters).await;
    assert_eq!(status, 200, "{v}");
    assert_close(&v, &json!(got), 1e-6, "with parameters");
    // SageMaker's and the base URL's routes take the same body on an embedder.
    for path in ["/invocations", "/"] {
        let (status, v) = post(&app, path, body.clone()).await;
        assert_eq!(status, 200, "{path}: {v}");
        assert_close(&v, &json!(got), 1e-6, path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similarity_refuses_bad_bodies_and_the_wrong_kind() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("bert");
    for (body, needle) in [
        (json!({"inputs": {"source_sentence": "a", "sentences": []}}), "sentences"),
        (json!({"inputs": {"sentences": ["a"]}}), "source_sentence"),
        (json!({"inputs": {"source_sentence": "a", "sentences": "b"}}), "sentences"),
        (json!({"inputs": "a"}), "inputs"),
        (json!({"inputs": {"source_sentence": "a", "sentences": ["b"]}, "truncate": true}), "truncate"),
        (json!({"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"prompt_name": "nope"}}), "nope"),
        (json!({"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"truncation_direction": "left"}}), "left"),
    ] {
        let (status, v) = post(&app, "/similarity", body.clone()).await;
        assert_tei_error(&v, status, StatusCode::UNPROCESSABLE_ENTITY, needle);
    }
    let (status, v) = post(&app, "/similarity", json!({"model": "reranker", "inputs": {"source_sentence": "a", "sentences": ["b"]}})).await;
    assert_tei_error(&v, status, StatusCode::BAD_REQUEST, "reranker");
    let (status, v) = post(&app, "/similarity", json!({"model": "nope", "inputs": {"source_sentence": "a", "sentences": ["b"]}})).await;
    assert_tei_error(&v, status, StatusCode::NOT_FOUND, "nope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_answer_as_the_models_own_route() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("bert");
    let texts = ["the first text", "a second, longer text about the weather"];
    for (route, body) in [
        ("/embed", json!({"inputs": texts})),
        ("/embed", json!({"inputs": texts[0], "normalize": false})),
        ("/rerank", json!({"model": "reranker", "query": "what is the weather", "texts": texts})),
        ("/predict", json!({"model": "reranker", "inputs": [["what is the weather", texts[1]]]})),
        ("/predict", json!({"model": "classifier", "inputs": texts[1]})),
        ("/embed_sparse", json!({"model": "splade", "inputs": texts})),
    ] {
        let (status, want) = post(&app, route, body.clone()).await;
        assert_eq!(status, 200, "{route} {body}: {want}");
        let (status, got) = post(&app, "/invocations", body.clone()).await;
        assert_eq!(status, 200, "/invocations {body}: {got}");
        assert_eq!(got, want, "/invocations {body} answers as {route}");
    }
    // A rerank body for a model that cannot rerank: the rerank route's refusal.
    let (status, v) = post(&app, "/invocations", json!({"query": "q", "texts": ["a"]})).await;
    assert_tei_error(&v, status, StatusCode::BAD_REQUEST, "embedding");
    let (status, v) = post(&app, "/invocations", json!({"inputs": []})).await;
    assert_tei_error(&v, status, StatusCode::UNPROCESSABLE_ENTITY, "empty");
    let (status, v, _) = send(&app, "POST", "/invocations", Some("{\"inputs\": ["), &[]).await;
    assert_tei_error(&v, status, StatusCode::BAD_REQUEST, "JSON");
    let (status, v) = post(&app, "/invocations", json!({"model": "nope", "inputs": "a"})).await;
    assert_tei_error(&v, status, StatusCode::NOT_FOUND, "nope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_predictions_are_each_instances_answer() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("bert");
    let cases = [
        ("/embed", json!({"inputs": ["one text", "and another"]})),
        ("/embed", json!({"inputs": "unnormalised", "normalize": false})),
        ("/similarity", json!({"inputs": {"source_sentence": "a cat", "sentences": ["a dog", "the stock market"]}})),
        ("/rerank", json!({"model": "reranker", "query": "cats", "texts": ["a cat", "a car"], "return_text": true})),
        ("/predict", json!({"model": "classifier", "inputs": [["good"], ["bad"]]})),
        ("/embed_sparse", json!({"model": "splade", "inputs": "sparse text"})),
    ];
    let mut want = Vec::new();
    for (route, body) in &cases {
        let (status, v) = post(&app, route, body.clone()).await;
        assert_eq!(status, 200, "{route} {body}: {v}");
        want.push(v);
    }
    let instances: Vec<Value> = cases.iter().map(|(_, body)| body.clone()).collect();
    let (status, v) = post(&app, "/vertex", json!({"instances": instances, "parameters": {}})).await;
    assert_eq!(status, 200, "{v}");
    let predictions = v["predictions"].as_array().unwrap_or_else(|| panic!("no predictions: {v}"));
    assert_eq!(predictions.len(), cases.len(), "one prediction per instance: {v}");
    for (i, (got, want)) in predictions.iter().zip(&want).enumerate() {
        assert_close(got, want, 1e-5, &format!("predictions[{i}] ({})", cases[i].0));
    }

    // The first failing instance fails the request and is named.
    let (status, v) = post(&app, "/vertex", json!({"instances": [{"inputs": "fine"}, {"inputs": 3}]})).await;
    assert_tei_error(&v, status, StatusCode::UNPROCESSABLE_ENTITY, "instances[1]");
    let (status, v) = post(&app, "/vertex", json!({"instances": [{"query": "q", "texts": ["a"]}]})).await;
    assert_tei_error(&v, status, StatusCode::BAD_REQUEST, "instances[0]");
    let (status, v) = post(&app, "/vertex", json!({"instances": []})).await;
    assert_tei_error(&v, status, StatusCode::UNPROCESSABLE_ENTITY, "instances");
    let (status, v) = post(&app, "/vertex", json!({"inputs": "not an envelope"})).await;
    assert_tei_error(&v, status, StatusCode::UNPROCESSABLE_ENTITY, "instances");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_is_v1_embeddings_with_openais_errors() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("bert");
    let body = json!({"input": ["hello", "world"], "model": "bert", "encoding_format": "float"});
    let (status, want) = post(&app, "/v1/embeddings", body.clone()).await;
    assert_eq!(status, 200, "{want}");
    let (status, got) = post(&app, "/embeddings", body).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, want);
    // OpenAI's error shape, from the handler and from the body's rejection alike.
    let (status, v) = post(&app, "/embeddings", json!({"input": [], "model": "bert"})).await;
    assert_eq!((status, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("input")), "{v}");
    let (status, v, _) = send(&app, "POST", "/embeddings", Some("not json"), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("JSON")), "{v}");
    let (status, v) = post(&app, "/embeddings", json!({"input": "x", "model": "reranker"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("wrong_model_kind")), "{v}");
}

#[tokio::test]
async fn ping_is_open_and_ready_the_new_routes_need_the_key_and_keep_the_limits() {
    let _gate = embed_testkit::module_gate(module_path!());
    let limits = Limits { max_inputs: 3, ..Limits::default() };
    let f = inproc::fixture(2, |c: ServerConfig| c.with_api_key(Some("s3cret".into())).with_limits(limits), FaultInjection::default(), |r| r);
    let app = &f.app;
    let (status, v, _) = send(app, "GET", "/ping", None, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not ready before preload, and no key needed: {v}");
    f.state.preload().await.unwrap();
    let (status, v, _) = send(app, "GET", "/ping", None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    let similarity = |n: usize| json!({"inputs": {"source_sentence": "s", "sentences": vec!["x"; n]}}).to_string();
    let routes = [
        ("/similarity", similarity(2)),
        ("/invocations", json!({"inputs": "x"}).to_string()),
        ("/vertex", json!({"instances": [{"inputs": "x"}]}).to_string()),
        ("/embeddings", json!({"input": "x"}).to_string()),
        ("/v2/embed", json!({"texts": ["x"]}).to_string()),
    ];
    let key = [("authorization", "Bearer s3cret")];
    for (path, body) in &routes {
        let (status, v, h) = send(app, "POST", path, Some(body), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {v}");
        assert_eq!(h["www-authenticate"], "Bearer", "{path}");
        let openai = *path == "/embeddings" || path.starts_with("/v2/");
        let message = if openai { &v["error"]["message"] } else { &v["error"] };
        assert!(message.as_str().is_some_and(|m| m.contains("API key")), "{path}: {v}");
        let (status, v, _) = send(app, "POST", path, Some(body), &key).await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
    }
    // The source sentence counts as an input (as in TEI): 3 sentences and the source are 4 > 3.
    let (status, v, _) = send(app, "POST", "/similarity", Some(&similarity(3)), &key).await;
    assert_tei_error(&v, status, StatusCode::PAYLOAD_TOO_LARGE, "max_inputs");
    let four = json!({"instances": vec![json!({"inputs": "x"}); 4]}).to_string();
    let (status, v, _) = send(app, "POST", "/vertex", Some(&four), &key).await;
    assert_tei_error(&v, status, StatusCode::PAYLOAD_TOO_LARGE, "max_inputs");
    f.state.pool().close().await;
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_i64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_embed_types_are_the_float_vectors_quantized() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("bert");
    let texts = ["the first text to embed", "another, rather different sentence about rivers"];
    let all_types = ["float", "int8", "uint8", "binary", "ubinary", "base64"];
    let body = json!({"model": "bert", "texts": texts, "input_type": "search_document", "embedding_types": all_types});
    let (status, v) = post(&app, "/v2/embed", body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["response_type"].as_str(), v["meta"]["api_version"]["version"].as_str()), (Some("embeddings_by_type"), Some("2")), "{v}");
    assert_eq!(v["texts"], json!(texts));
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    let (_, tokens) = post(&app, "/tokenize", json!({"model": "bert", "inputs": texts})).await;
    let token_count: usize = tokens.as_array().unwrap().iter().map(|t| t.as_array().unwrap().len()).sum();
    assert_eq!(v["meta"]["billed_units"]["input_tokens"].as_u64(), Some(token_count as u64), "{v}");

    // float: what /embed gives (normalised; this model has no document prompt).
    let (_, embedded) = post(&app, "/embed", json!({"model": "bert", "inputs": texts})).await;
    let e = &v["embeddings"];
    assert_close(&e["float"], &embedded, 1e-6, "float");
    for (i, float) in e["float"].as_array().unwrap().iter().enumerate() {
        let x: Vec<f32> = floats(float).into_iter().map(|x| x as f32).collect();
        let d = x.len();
        // int8: scaled so the largest magnitude is 127, rounded; uint8: the same plus 128.
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let int8: Vec<i64> = x.iter().map(|v| (v / max * 127.0).round() as i64).collect();
        assert_eq!(ints(&e["int8"][i]), int8, "int8[{i}]");
        assert!(int8.iter().any(|q| q.abs() == 127), "the full range is used");
        assert_eq!(ints(&e["uint8"][i]), int8.iter().map(|q| q + 128).collect::<Vec<_>>(), "uint8[{i}]");
        let q: Vec<f64> = int8.iter().map(|&q| q as f64).collect();
        assert!(cosine(&q, &floats(float)) > 0.999, "int8 keeps the direction");
        // ubinary: bit k of byte j (highest first) says whether dimension 8j+k is positive.
        let ubinary = ints(&e["ubinary"][i]);
        assert_eq!(ubinary.len(), d.div_ceil(8), "ubinary[{i}]");
        for (k, v) in x.iter().enumerate() {
            let bit = (ubinary[k / 8] >> (7 - k % 8)) & 1;
            assert_eq!(bit == 1, *v > 0.0, "ubinary[{i}] dimension {k} ({v})");
        }
        assert!(ubinary.iter().all(|b| (0..=255).contains(b)));
        assert_eq!(ints(&e["binary"][i]), ubinary.iter().map(|b| b - 128).collect::<Vec<_>>(), "binary[{i}]");
        // base64: the little-endian f32 bytes.
        let bytes = base64::engine::general_purpose::STANDARD.decode(e["base64"][i].as_str().unwrap()).unwrap();
        let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(decoded, x, "base64[{i}]");
    }

    // Only what was asked for; float by default.
    let (status, v) = post(&app, "/v2/embed", json!({"model": "bert", "texts": texts, "embedding_types": ["ubinary"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["embeddings"].as_object().unwrap().keys().collect::<Vec<_>>(), ["ubinary"], "{v}");
    let (status, v) = post(&app, "/v2/embed", json!({"model": "bert", "texts": texts})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["embeddings"].as_object().unwrap().keys().collect::<Vec<_>>(), ["float"], "{v}");

    // output_dimension: the first N dimensions, re-normalised, in every encoding.
    let (status, v) = post(&app, "/v2/embed", json!({"model": "bert", "texts": texts, "output_dimension": 12, "embedding_types": ["float", "ubinary"]})).await;
    assert_eq!(status, 200, "{v}");
    let (_, cut) = post(&app, "/embed", json!({"model": "bert", "inputs": texts, "dimensions": 12})).await;
    assert_close(&v["embeddings"]["float"], &cut, 1e-6, "output_dimension");
    assert_eq!(ints(&v["embeddings"]["ubinary"][0]).len(), 2, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_input_types_pick_the_models_prompts() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (dir, path) = TinyModel {
        prompts: vec![("query".into(), "q: ".into()), ("document".into(), "d: ".into()), ("Classification".into(), "classify: ".into())],
        ..TinyModel::default()
    }
    .write_temp();
    let f = inproc::fixture(3, |c| c, FaultInjection::default(), |r| r.with("prompted", ModelSpec::new(path.to_string_lossy()).named("prompted")));
    let text = "a sentence to embed";
    let embed = |extra: Value| {
        let mut body = json!({"model": "prompted", "inputs": [text]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let plain = send(&f.app, "POST", "/embed", Some(&embed(json!({})).to_string()), &[]).await.1;
    for (input_type, want) in [
        (json!("search_query"), embed(json!({"prompt_name": "query"}))),
        (json!("search_document"), embed(json!({"prompt_name": "document"}))),
        (json!("classification"), embed(json!({"prompt_name": "Classification"}))),
        (json!("clustering"), embed(json!({}))),
        (Value::Null, embed(json!({}))),
    ] {
        let (status, want, _) = send(&f.app, "POST", "/embed", Some(&want.to_string()), &[]).await;
        assert_eq!(status, 200, "{want}");
        let body = json!({"model": "prompted", "texts": [text], "input_type": input_type});
        let (status, got, _) = send(&f.app, "POST", "/v2/embed", Some(&body.to_string()), &[]).await;
        assert_eq!(status, 200, "{input_type}: {got}");
        assert_close(&got["embeddings"]["float"], &want, 1e-6, &input_type.to_string());
        if input_type == "search_query" || input_type == "classification" {
            let d = embed_testkit::max_abs_diff(&floats(&got["embeddings"]["float"][0]).iter().map(|&x| x as f32).collect::<Vec<_>>(), &floats(&plain[0]).iter().map(|&x| x as f32).collect::<Vec<_>>());
            assert!(d > 1e-3, "{input_type} adds a prompt");
        }
    }
    f.state.pool().close().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_embed_refuses_what_it_cannot_do_by_name() {
    let _gate = embed_testkit::module_gate(module_path!());
    let app = app("bert");
    let long = "hello world ".repeat(200);
    for (body, param) in [
        (json!({"texts": []}), "texts"),
        (json!({"input_type": "search_query"}), "texts"),
        (json!({"texts": ["a"], "images": ["data:image/png;base64,AAAA"]}), "images"),
        (json!({"inputs": [{"content": [{"type": "text", "text": "a"}]}]}), "inputs"),
        (json!({"texts": ["a"], "max_tokens": 10}), "max_tokens"),
        (json!({"texts": ["a"], "truncate": "START"}), "truncate"),
        (json!({"texts": ["a"], "truncate": "MIDDLE"}), "truncate"),
        (json!({"texts": [long], "truncate": "NONE"}), "input"),
        (json!({"texts": ["a"], "embedding_types": []}), "embedding_types"),
        (json!({"texts": ["a"], "embedding_types": ["float16"]}), "embedding_types"),
        (json!({"texts": ["a"], "input_type": "image"}), "input_type"),
        (json!({"texts": ["a"], "input_type": "poetry"}), "input_type"),
        (json!({"texts": ["a"], "output_dimension": 0}), "output_dimension"),
        (json!({"texts": ["a"], "output_dimension": 1000}), "output_dimension"),
        (json!({"texts": ["a"], "model": "reranker"}), "model"),
    ] {
        let (status, v) = post(&app, "/v2/embed", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"]["message"].is_string(), "OpenAI's shape, as on /v2/rerank: {v}");
        assert_eq!(v["error"]["param"].as_str(), Some(param), "{body}: {v}");
    }
    let (status, v) = post(&app, "/v2/embed", json!({"texts": ["a"], "model": "reranker"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("wrong_model_kind")), "{v}");
    let (status, v) = post(&app, "/v2/embed", json!({"texts": [long], "truncate": "END"})).await;
    assert_eq!(status, 200, "END cuts the end: {v}");
}

/// TEI's `--cors-allow-origin`: a listed origin's preflight is answered before the key is asked
/// for, with the key's header allowed, and its answers carry the origin; another origin gets no
/// CORS headers; without the setting none are sent at all.
#[tokio::test]
async fn cors_allow_origin() {
    let _gate = embed_testkit::module_gate(module_path!());
    let origin = axum::http::HeaderValue::from_static("https://app.example");
    let f = inproc::fixture(2, |c: ServerConfig| c.with_api_key(Some("s3cret".into())).with_cors_allow_origin(vec![origin]), FaultInjection::default(), |r| r);
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "authorization,content-type"),
    ];
    let (status, _, h) = send(&f.app, "OPTIONS", "/embed", None, &preflight).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let allowed = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    let body = Some(r#"{"inputs": "hello"}"#);
    let (status, _, h) = send(&f.app, "POST", "/embed", body, &[("origin", "https://app.example"), ("authorization", "Bearer s3cret")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let (status, _, h) = send(&f.app, "POST", "/embed", body, &[("origin", "https://other.example"), ("authorization", "Bearer s3cret")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(h.get("access-control-allow-origin").is_none(), "another origin is not allowed");
    let (status, _, _) = send(&f.app, "POST", "/embed", body, &[("origin", "https://app.example")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "CORS does not open the routes");

    let plain = inproc::fixture(2, |c| c, FaultInjection::default(), |r| r);
    let (status, _, h) = send(&plain.app, "OPTIONS", "/embed", None, &preflight).await;
    assert!(h.get("access-control-allow-origin").is_none() && status == StatusCode::METHOD_NOT_ALLOWED, "{status}");
}

/// The timing headers (TEI's, and `x-compute-type`, here `cpu`) are exposed to a page's script
/// under CORS, and the OpenAPI document lists them on every computing route's answer (only
/// there).
#[tokio::test]
async fn timing_headers_are_exposed_and_documented() {
    let _gate = embed_testkit::module_gate(module_path!());
    const TIMING: [&str; 8] = [
        "x-compute-type",
        "x-compute-time",
        "x-compute-characters",
        "x-compute-tokens",
        "x-total-time",
        "x-tokenization-time",
        "x-queue-time",
        "x-inference-time",
    ];
    let origin = axum::http::HeaderValue::from_static("https://app.example");
    let f = inproc::fixture(2, |c: ServerConfig| c.with_cors_allow_origin(vec![origin]), FaultInjection::default(), |r| r);
    let (status, _, h) = send(&f.app, "POST", "/embed", Some(r#"{"inputs": "hello"}"#), &[("origin", "https://app.example")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["x-compute-type"], "cpu");
    let exposed: Vec<String> = h["access-control-expose-headers"].to_str().unwrap().split(',').map(|s| s.trim().to_ascii_lowercase()).collect();
    for name in TIMING.iter().chain(&["x-request-id"]) {
        assert!(exposed.iter().any(|e| e == name), "{name} is not exposed: {exposed:?}");
        assert!(h.contains_key(*name), "{name} is not sent: {h:?}");
    }

    let doc = serde_json::to_value(embed_server::openapi()).unwrap();
    for path in ["/embed", "/v1/embeddings", "/rerank", "/v2/embed", "/similarity"] {
        let headers = doc["paths"][path]["post"]["responses"]["200"]["headers"].as_object().unwrap_or_else(|| panic!("{path}: no headers"));
        let mut names: Vec<&str> = headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut want = TIMING.to_vec();
        want.sort_unstable();
        assert_eq!(names, want, "{path}");
        assert_eq!(headers["x-compute-time"]["schema"]["type"], "integer", "{path}");
        assert!(headers["x-queue-time"]["description"].as_str().is_some_and(|d| !d.is_empty()), "{path}");
    }
    assert!(doc["paths"]["/info"]["get"]["responses"]["200"].get("headers").is_none(), "/info computes nothing");
}
