//! The flags, the environment and the file, merged and refused.

use super::{build, parse_bytes, Args, OtlpSettings, TelemetrySettings};
use clap::Parser;
use embed_core::{DType, Pooling};
use embed_pool::{HostBudget, WarmMode};
use std::net::Ipv4Addr;

#[test]
fn toml_file_flags_and_precedence() {
    let dir = std::env::temp_dir().join(format!("embed-server-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.toml");
    let calibration = dir.join("calibration.txt");
    std::fs::write(&calibration, "first text\n\n  \nsecond text\n").unwrap();
    std::fs::write(
        &path,
        r#"
bind = "0.0.0.0:9000"
default_model = "bge"
max_models = 3
memory_budget = "1.5G"
idle_ttl = 60
max_inputs = 64
api_key = "from-file"

[models.minilm]
source = "/models/minilm"

[models.minilm-int8]
source = "/models/minilm"
dtype = "int8"
int8_calibration = "CALIBRATION"

[models.minilm-int8-exact]
source = "/models/minilm"
dtype = "int8"
int8_kernel = "weight-only"

[models.bge]
source = "BAAI/bge-small-en-v1.5"
dtype = "bf16"
query_prefix = "Represent this sentence: "
pinned = true
"#
        .replace("CALIBRATION", calibration.to_str().unwrap()),
    )
    .unwrap();
    let args = Args::parse_from(["embed-server", "--config", path.to_str().unwrap(), "--max-inputs", "8"]);
    let (pool, registry, config, bind) = build(args).unwrap();
    assert_eq!(config.default_model, "bge");
    assert!(!config.any_model_name, "our own start: names are names");
    assert_eq!(config.preload, vec!["bge".to_string()]);
    assert_eq!(bind.port(), 9000);
    assert_eq!(config.limits.max_inputs, 8, "flags win over the file");
    assert_eq!(config.api_key.as_deref(), Some("from-file"));
    assert_eq!(pool.max_models, 3);
    assert_eq!(pool.memory_budget, Some(3 << 29));
    let bge = registry.get("bge").unwrap();
    assert_eq!(bge.spec.options.dtype, Some(embed_core::DType::Bf16));
    assert_eq!(bge.spec.options.query_prefix.as_deref(), Some("Represent this sentence: "));
    assert!(bge.settings.pinned);
    assert!(registry.contains("minilm"));
    assert_eq!(registry.get("minilm").unwrap().spec.options.dtype, None, "no dtype: the family's choice");
    let int8 = &registry.get("minilm-int8").unwrap().spec.options;
    assert_eq!(int8.dtype, Some(embed_core::DType::Int8), "per model");
    assert_eq!(int8.int8_calibration.as_deref(), Some(&["first text".to_string(), "second text".to_string()][..]), "blank lines dropped");
    let exact = &registry.get("minilm-int8-exact").unwrap().spec.options;
    assert_eq!((exact.dtype, exact.int8_kernel), (Some(embed_core::DType::Int8), Some(embed_core::Int8Kernel::WeightOnly)));
    let args = Args::parse_from(["embed-server", "--config", path.to_str().unwrap(), "--threads", "3"]);
    assert_eq!(build(args).unwrap().1.get("minilm").unwrap().spec.options.threads, Some(3), "--threads reaches every model");
    assert!(build(Args::parse_from(["embed-server", "--config", path.to_str().unwrap(), "--threads", "0"])).is_err());
    let args = Args::parse_from(["embed-server", "--config", path.to_str().unwrap(), "--dtype", "auto"]);
    assert_eq!(build(args).unwrap().1.get("minilm").unwrap().spec.options.dtype, None);
    let args = Args::parse_from(["embed-server", "--config", path.to_str().unwrap(), "--dtype", "f16"]);
    assert_eq!(build(args).unwrap().1.get("minilm").unwrap().spec.options.dtype, Some(embed_core::DType::F16));
    let args = Args::parse_from(["embed-server", "--config", path.to_str().unwrap(), "--dtype", "int8"]);
    assert_eq!(build(args).unwrap().1.get("minilm").unwrap().spec.options.dtype, Some(embed_core::DType::Int8));
    let args = Args::parse_from(["embed-server", "--config", path.to_str().unwrap(), "--dtype", "f8"]);
    assert!(build(args).is_err(), "an unknown precision is refused");

    // LLM rerankers: kind = "reranker" (Qwen3-Reranker's prompt), a prompt of another, the
    // --reranker flag; a prompt without the kind and an unknown kind are refused.
    std::fs::write(
        &path,
        r#"
[models.qwen]
source = "Qwen/Qwen3-Reranker-0.6B"
kind = "reranker"

[models.other]
source = "/models/other-llm-reranker"
kind = "reranker"
[models.other.llm_reranker]
default_instruction = "Find the answer"
yes_token = "Yes"
no_token = "No"
"#,
    )
    .unwrap();
    let (_, registry, _, _) = build(Args::parse_from(["embed-server", "--config", path.to_str().unwrap(), "--reranker", "flag=/models/r"])).unwrap();
    assert_eq!(registry.get("qwen").unwrap().spec.options.llm_reranker, Some(embed_core::LlmReranker::qwen3()));
    let other = registry.get("other").unwrap().spec.options.llm_reranker.clone().unwrap();
    assert_eq!((other.default_instruction.as_str(), other.yes_token.as_str(), other.no_token.as_str()), ("Find the answer", "Yes", "No"));
    assert_eq!(other.prefix, embed_core::LlmReranker::qwen3().prefix, "unset fields are Qwen3-Reranker's");
    assert_eq!(registry.get("flag").unwrap().spec.options.llm_reranker, Some(embed_core::LlmReranker::qwen3()));
    std::fs::write(&path, "[models.a]\nsource = \"/m\"\n[models.a.llm_reranker]\nyes_token = \"y\"\n").unwrap();
    let err = build(Args::parse_from(["embed-server", "--config", path.to_str().unwrap()])).unwrap_err();
    assert!(err.to_string().contains("kind = \"reranker\""), "{err:#}");
    std::fs::write(&path, "[models.a]\nsource = \"/m\"\nkind = \"sparse\"\n").unwrap();
    let err = build(Args::parse_from(["embed-server", "--config", path.to_str().unwrap()])).unwrap_err();
    assert!(err.to_string().contains("\"sparse\""), "{err:#}");

    std::fs::write(&path, "bogus_key = 1\n").unwrap();
    let err = build(Args::parse_from(["embed-server", "--config", path.to_str().unwrap()])).unwrap_err();
    assert!(format!("{err:#}").contains("bogus_key"), "{err:#}");
    let err = build(Args::parse_from(["embed-server"])).unwrap_err();
    assert!(err.to_string().contains("no models configured"));
    let err = build(Args::parse_from(["embed-server", "--model", "oops"])).unwrap_err();
    assert!(err.to_string().contains("NAME=SOURCE"));
}

#[test]
fn warm_tier_and_pressure_settings() {
    let base = ["embed-server", "--model", "m=/models/m"];
    let with = |extra: &[&str]| build(Args::parse_from(base.iter().chain(extra))).map(|b| b.0);
    let pool = with(&[]).unwrap();
    assert_eq!((pool.warm.mode, pool.warm.host_budget), (WarmMode::Auto, HostBudget::FractionOfRam(0.25)));
    let pool = with(&["--warm-tier", "off", "--host-budget", "8G", "--pressure-thresholds", "0.5,0.8,0.9"]).unwrap();
    assert_eq!((pool.warm.mode, pool.warm.host_budget), (WarmMode::Off, HostBudget::Bytes(8 << 30)));
    assert_eq!((pool.pressure.moderate, pool.pressure.high, pool.pressure.critical), (0.5, 0.8, 0.9));
    assert_eq!(with(&["--host-budget", "40%"]).unwrap().warm.host_budget, HostBudget::FractionOfRam(0.4));
    for bad in [["--warm-tier", "sometimes"], ["--host-budget", "140%"], ["--pressure-thresholds", "0.9,0.8,0.95"], ["--pressure-thresholds", "0.5,0.8"]] {
        assert!(with(&bad).is_err(), "{bad:?} is refused");
    }
}

/// A TEI environment for [`Args::with_tei_env`]: only these variables are set.
fn tei_env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

type Built = (embed_pool::PoolConfig, embed_pool::ModelRegistry, embed_server::ServerConfig, std::net::SocketAddr);

fn tei(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Built> {
    let argv = std::iter::once("embed-server").chain(args.iter().copied());
    build(Args::try_parse_from(argv)?.with_tei_env(tei_env(env)))
}

fn tei_err(args: &[&str], env: &[(&str, &str)]) -> String {
    match tei(args, env) {
        Ok(_) => panic!("{args:?} {env:?} was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

/// The `args` of TEI's Kubernetes example, as written there, start this server: the model by
/// hub id as the default, TEI's address defaults, the client batch limit and truncation.
#[test]
fn tei_manifest_args_build() {
    let args = ["--model-id", "BAAI/bge-base-en-v1.5", "--port", "80", "--max-client-batch-size", "64", "--auto-truncate"];
    let (_pool, registry, config, bind) = tei(&args, &[]).unwrap();
    assert_eq!(config.default_model, "BAAI/bge-base-en-v1.5");
    assert_eq!(config.preload, vec!["BAAI/bge-base-en-v1.5".to_string()]);
    assert_eq!(registry.get("BAAI/bge-base-en-v1.5").unwrap().spec.source, "BAAI/bge-base-en-v1.5");
    assert_eq!(registry.len(), 1);
    assert_eq!(bind, "0.0.0.0:80".parse().unwrap(), "TEI listens on every address");
    assert_eq!(config.limits.max_inputs, 64);
    assert!(config.limits.truncate_by_default);
    assert!(config.any_model_name, "one model: a request's `model` reaches it whatever it says, as in TEI");
    assert_eq!(config.model_for(Some("text-embedding-3-small".into())), "BAAI/bge-base-en-v1.5");
    // TEI's docker example: only the model, so TEI's default port; HOSTNAME is the pod's name.
    let (_, _, _, bind) = tei(&["--model-id", "BAAI/bge-base-en-v1.5"], &[("HOSTNAME", "tei-7c9d8-x2x")]).unwrap();
    assert_eq!(bind, "0.0.0.0:3000".parse().unwrap());
    // The TEI image sets PORT=80.
    let (_, _, _, bind) = tei(&["--model-id", "BAAI/bge-base-en-v1.5"], &[("PORT", "80")]).unwrap();
    assert_eq!(bind.port(), 80);
}

#[test]
fn tei_model_flags() {
    let (_, registry, config, _) = tei(&["--model-id", "org/model", "--revision", "refs/pr/2", "--served-model-name", "emb"], &[]).unwrap();
    assert_eq!(config.default_model, "emb");
    assert_eq!(registry.get("emb").unwrap().spec.source, "org/model@refs/pr/2");
    assert!(tei_err(&["--model-id", "org/model@v1", "--revision", "v2"], &[]).contains("give one"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(tei_err(&["--model-id", d, "--revision", "v2"], &[]).contains("is a directory"));
    let (_, registry, config, _) = tei(&["--model-id", d, "--model", "other=org/other"], &[]).unwrap();
    assert_eq!(config.default_model, d, "--model-id is the default; --model adds more");
    assert!(registry.contains("other"));
    assert!(!config.any_model_name, "beside other models, names keep their meaning");
    assert_eq!(config.model_for(Some("other".into())), "other");
    assert!(tei_err(&["--model-id", "org/model", "--served-model-name", "x", "--model", "x=org/y"], &[]).contains("pick another name"));
    assert!(tei(&["--model-id", "org/model", "--default-model", "org/model"], &[]).is_err(), "one default");

    for (value, pooling) in [("cls", Pooling::Cls), ("mean", Pooling::Mean), ("last-token", Pooling::LastToken), ("max", Pooling::Max)] {
        let (_, registry, _, _) = tei(&["--model-id", "org/model", "--pooling", value], &[]).unwrap();
        assert_eq!(registry.get("org/model").unwrap().spec.options.pooling, Some(pooling), "{value}");
    }
    let err = tei_err(&["--model-id", "org/model", "--pooling", "splade"], &[]);
    assert!(err.contains("--pooling splade is not supported") && err.contains("modules.json"), "{err}");
    assert!(tei_err(&["--model-id", "org/model", "--pooling", "median"], &[]).contains("--pooling \"median\""));

    let (_, registry, _, _) = tei(&["--model-id", "org/model", "--default-prompt-name", "query"], &[]).unwrap();
    let o = &registry.get("org/model").unwrap().spec.options;
    assert_eq!((o.default_prompt_name.as_deref(), o.default_prompt.as_deref()), (Some("query"), None));
    let (_, registry, _, _) = tei(&["--model-id", "org/model", "--default-prompt", "query: "], &[]).unwrap();
    assert_eq!(registry.get("org/model").unwrap().spec.options.default_prompt.as_deref(), Some("query: "));
    assert!(tei(&["--model-id", "org/model", "--default-prompt", "q: ", "--default-prompt-name", "query"], &[]).is_err(), "TEI: one or the other");

    for flag in [["--revision", "v1"], ["--served-model-name", "x"], ["--pooling", "cls"], ["--default-prompt", "q: "], ["--default-prompt-name", "query"]] {
        let err = tei_err(&["--model", "m=/models/m", flag[0], flag[1]], &[]);
        assert!(err.contains(flag[0]) && err.contains("applies to the --model-id model"), "{err}");
    }
}

#[test]
fn tei_limits_and_precision() {
    let m = ["--model-id", "org/model"];
    let with = |extra: &[&str], env: &[(&str, &str)]| tei(&[&m[..], extra].concat(), env).unwrap();
    for (value, dtype) in [("float32", DType::F32), ("float16", DType::F16), ("bfloat16", DType::Bf16)] {
        assert_eq!(with(&["--dtype", value], &[]).1.get("org/model").unwrap().spec.options.dtype, Some(dtype), "--dtype {value}");
        assert_eq!(with(&[], &[("DTYPE", value)]).1.get("org/model").unwrap().spec.options.dtype, Some(dtype), "DTYPE={value}");
    }
    assert_eq!(with(&["--dtype", "float16"], &[("DTYPE", "float32")]).1.get("org/model").unwrap().spec.options.dtype, Some(DType::F16), "the flag wins");
    assert!(tei(&[&m[..], &["--dtype", "float8"]].concat(), &[]).is_err());

    let (pool, _, config, _) = with(
        &["--max-concurrent-requests", "7", "--max-batch-tokens", "4096", "--max-batch-requests", "16", "--payload-limit", "1000000", "--api-key", "k1"],
        &[],
    );
    assert_eq!(config.limits.max_concurrent, 7);
    assert_eq!((pool.default_options.max_batch_tokens, pool.default_options.max_batch_size), (Some(4096), Some(16)));
    assert_eq!(config.limits.max_body_bytes, 1_000_000);
    assert_eq!(config.api_key.as_deref(), Some("k1"));
    let (pool, registry, config, _) = with(&[], &[("MAX_BATCH_TOKENS", "8192"), ("API_KEY", "k2")]);
    assert_eq!(pool.default_options.max_batch_tokens, Some(8192));
    assert_eq!(registry.get("org/model").unwrap().spec.options.max_batch_tokens, Some(8192));
    assert_eq!(config.api_key.as_deref(), Some("k2"));
    assert!(tei_err(&m, &[("MAX_BATCH_TOKENS", "lots")]).contains("MAX_BATCH_TOKENS"));
    assert!(tei_err(&[&m[..], &["--max-batch-requests", "0"]].concat(), &[]).contains("--max-batch-requests"));
    assert!(tei(&[&m[..], &["--max-concurrent", "3", "--max-concurrent-requests", "4"]].concat(), &[]).is_err(), "ours and TEI's name for one limit");
    assert!(tei(&[&m[..], &["--max-inputs", "3", "--max-client-batch-size", "4"]].concat(), &[]).is_err());
    assert!(tei(&[&m[..], &["--max-body-bytes", "3", "--payload-limit", "4"]].concat(), &[]).is_err());

    assert!(!with(&["--auto-truncate", "false"], &[]).2.limits.truncate_by_default);
    assert!(with(&["--auto-truncate"], &[]).2.limits.truncate_by_default);
    assert!(with(&[], &[]).2.limits.truncate_by_default, "truncating is this server's default");
    assert!(tei(&[&m[..], &["--auto-truncate", "--no-truncate"]].concat(), &[]).is_err());

    let cache = tempfile::tempdir().unwrap();
    let (pool, registry, _, _) = with(&["--hf-token", "hf_abc", "--huggingface-hub-cache", cache.path().to_str().unwrap()], &[]);
    let hub = &registry.get("org/model").unwrap().spec.options.hub;
    assert_eq!(hub.token.as_ref().map(|t| t.expose()), Some("hf_abc"));
    assert_eq!(hub.cache_dir.as_deref(), Some(cache.path()));
    assert_eq!(&pool.default_options.hub, hub, "every model's hub settings");
    let (_, registry, _, _) = with(&["--hf-api-token", "hf_old"], &[]);
    assert_eq!(registry.get("org/model").unwrap().spec.options.hub.token.as_ref().map(|t| t.expose()), Some("hf_old"));
}

#[test]
fn tei_address() {
    let m = ["--model-id", "org/model"];
    let bind = |extra: &[&str], env: &[(&str, &str)]| tei(&[&m[..], extra].concat(), env).unwrap().3;
    assert_eq!(bind(&["--hostname", "127.0.0.1", "-p", "8081"], &[]), "127.0.0.1:8081".parse().unwrap());
    assert_eq!(bind(&["--hostname", "::"], &[]), "[::]:3000".parse().unwrap());
    assert_eq!(bind(&[], &[("HOSTNAME", "10.1.2.3"), ("PORT", "9090")]), "10.1.2.3:9090".parse().unwrap());
    assert_eq!(bind(&["--port", "81"], &[("PORT", "9090")]).port(), 81, "the flag wins");
    assert_eq!(bind(&[], &[("HOSTNAME", "embed-5f7d9-abcde")]).ip(), Ipv4Addr::UNSPECIFIED, "a pod's HOSTNAME is its name");
    let err = tei_err(&[&m[..], &["--hostname", "my-host"]].concat(), &[]);
    assert!(err.contains("--hostname \"my-host\"") && err.contains("IP address"), "{err}");
    assert!(tei_err(&m, &[("PORT", "tcp://10.0.0.1:80")]).contains("PORT="));
    // Our own start: ambient HOSTNAME and PORT are not ours to follow.
    let plain = tei(&["--model", "m=/models/m"], &[("HOSTNAME", "10.1.2.3"), ("PORT", "9090")]).unwrap().3;
    assert_eq!(plain, "127.0.0.1:8080".parse().unwrap());
    let (_, _, _, b) = tei(&["--model", "m=/models/m", "--port", "9001"], &[("HOSTNAME", "pod")]).unwrap();
    assert_eq!(b, "0.0.0.0:9001".parse().unwrap(), "TEI's --port alone: TEI's host");
    let (_, _, _, b) = tei(&["--model-id", "org/model", "--bind", "127.0.0.1:7000"], &[("PORT", "80")]).unwrap();
    assert_eq!(b, "127.0.0.1:7000".parse().unwrap(), "--bind wins over TEI's environment");
    assert!(tei(&["--model-id", "org/model", "--bind", "127.0.0.1:7000", "--port", "80"], &[]).is_err(), "--bind or --port");
}

#[test]
fn tei_flags_that_cannot_apply_are_refused() {
    let m = ["--model-id", "org/model"];
    for (flag, value, why) in [
        ("--uds-path", Some("/tmp/tei.sock"), "runs its models in-process"),
        ("--dense-path", Some("2_Dense_1024"), "not implemented"),
        ("--tokenization-workers", Some("4"), "no tokenizer worker pool"),
        ("--device-id", Some("1"), "--device cuda:N"),
        ("--disable-spans", None, "always carry the span"),
    ] {
        let args: Vec<&str> = m.iter().copied().chain([flag]).chain(value).collect();
        let err = tei_err(&args, &[]);
        assert!(err.starts_with(&format!("{flag} (")) && err.contains("is not supported") && err.contains(why), "{flag}: {err}");
    }
    assert!(tei(&[&m[..], &["--disable-spans", "false"]].concat(), &[]).is_ok(), "DISABLE_SPANS=false asks for nothing");
    let json = |extra: &[&str]| Args::try_parse_from([&["embed-server"][..], &m[..], extra].concat()).unwrap().telemetry().unwrap().json;
    assert!(json(&["--json-output"]) && !json(&["--json-output", "false"]) && !json(&[]), "--json-output [BOOL]");
    let port = |extra: &[&str]| Args::try_parse_from([&["embed-server"][..], &m[..], extra].concat()).unwrap().prometheus_port();
    assert_eq!((port(&["--prometheus-port", "9000"]), port(&[])), (Some(9000), None), "no metrics listener unless asked");
}

/// TEI's OTLP flags are taken, with TEI's default service name in a TEI-style start; the
/// config file gives the same keys, below the flags.
#[test]
fn telemetry_flags_and_file() {
    let settings = |args: &[&str]| Args::try_parse_from([&["embed-server"][..], args].concat()).unwrap().telemetry();
    assert_eq!(settings(&["--model", "m=/m"]).unwrap(), TelemetrySettings { json: false, otlp: None });
    let otlp = |endpoint: &str, name: &str| Some(OtlpSettings { endpoint: endpoint.into(), service_name: name.into() });
    let tei_start = settings(&["--model-id", "org/m", "--otlp-endpoint", "http://collector:4317", "--json-output"]).unwrap();
    assert_eq!(tei_start, TelemetrySettings { json: true, otlp: otlp("http://collector:4317", "text-embeddings-inference.server") });
    let ours = settings(&["--model", "m=/m", "--otlp-endpoint", "http://c:4317", "--otlp-service-name", "emb"]).unwrap();
    assert_eq!(ours.otlp, otlp("http://c:4317", "emb"));
    assert_eq!(settings(&["--model", "m=/m", "--otlp-endpoint", "http://c:4317"]).unwrap().otlp, otlp("http://c:4317", "embed-server"));
    for (args, says) in [
        (&["--otlp-endpoint", "collector:4317"][..], "http://HOST:PORT"),
        (&["--otlp-endpoint", "http://"], "http://HOST:PORT"),
        (&["--otlp-endpoint", "https://c:4317"], "TLS to the collector is not built in"),
        (&["--otlp-service-name", "emb"], "give --otlp-endpoint too"),
        (&["--otlp-endpoint", "http://c:4317", "--otlp-service-name", " "], "is empty"),
    ] {
        let err = format!("{:#}", settings(&[&["--model", "m=/m"][..], args].concat()).unwrap_err());
        assert!(err.contains(says), "{args:?}: {err}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("embed.toml");
    std::fs::write(&file, "json_output = true\notlp_endpoint = \"http://file:4317\"\notlp_service_name = \"from-file\"\n[models.m]\nsource = \"/m\"\n").unwrap();
    let f = file.to_str().unwrap();
    let settings = |args: &[&str]| {
        let args = Args::try_parse_from([&["embed-server"][..], args].concat()).unwrap();
        args.with_config_file_tei_keys().unwrap().telemetry()
    };
    assert_eq!(settings(&["--config", f]).unwrap(), TelemetrySettings { json: true, otlp: otlp("http://file:4317", "from-file") });
    let flags_win = settings(&["--config", f, "--json-output", "false", "--otlp-service-name", "flag"]).unwrap();
    assert_eq!(flags_win, TelemetrySettings { json: false, otlp: otlp("http://file:4317", "flag") });
    assert!(build(Args::parse_from(["embed-server", "--config", f])).is_ok(), "build accepts the keys it leaves to telemetry()");
}

/// TEI's flags as config-file keys mean what the flags mean, below the flags; refusals and
/// one setting under both names are refused.
#[test]
fn tei_keys_in_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let file = write(
        "tei.toml",
        r#"
model_id = "BAAI/bge-base-en-v1.5"
revision = "v1"
served_model_name = "bge"
pooling = "cls"
hostname = "127.0.0.1"
port = 8088
max_concurrent_requests = 9
max_batch_requests = 8
max_client_batch_size = 7
auto_truncate = false
default_prompt_name = "query"
payload_limit = 123456
hf_token = "hf_from_file"
cors_allow_origin = "https://a.example,https://b.example"
prometheus_port = 9100
json_output = true
otlp_endpoint = "http://collector:4317"
"#,
    );
    let args = Args::try_parse_from(["embed-server", "--config", &file]).unwrap().with_config_file_tei_keys().unwrap();
    assert_eq!(args.prometheus_port(), Some(9100));
    let telemetry = args.telemetry().unwrap();
    assert!(telemetry.json);
    assert_eq!(telemetry.otlp.unwrap().service_name, "text-embeddings-inference.server", "a TEI-style start");
    let (pool, registry, config, bind) = build(args).unwrap();
    assert_eq!(bind, "127.0.0.1:8088".parse().unwrap());
    assert_eq!(config.default_model, "bge");
    let spec = &registry.get("bge").unwrap().spec;
    assert_eq!(spec.source, "BAAI/bge-base-en-v1.5@v1");
    assert_eq!(spec.options.pooling, Some(Pooling::Cls));
    assert_eq!(spec.options.default_prompt_name.as_deref(), Some("query"));
    assert_eq!(spec.options.hub.token.as_ref().map(|t| t.expose()), Some("hf_from_file"));
    assert_eq!(pool.default_options.max_batch_size, Some(8));
    assert_eq!((config.limits.max_concurrent, config.limits.max_inputs, config.limits.max_body_bytes), (9, 7, 123456));
    assert!(!config.limits.truncate_by_default);
    assert_eq!(config.cors_allow_origin, ["https://a.example", "https://b.example"]);

    // The flags win over the file.
    let (_, _, config, bind) = build(Args::parse_from(["embed-server", "--config", &file, "--port", "9001", "--max-concurrent", "2"])).unwrap();
    assert_eq!((bind.port(), config.limits.max_concurrent), (9001, 2));

    let model = "[models.m]\nsource = \"/m\"\n";
    for (text, says) in [
        ("uds_path = \"/tmp/s\"\n", "--uds-path (UDS_PATH) is not supported"),
        ("max_inputs = 3\nmax_client_batch_size = 4\n", "`max_inputs` and `max_client_batch_size`"),
        ("bind = \"127.0.0.1:1\"\nport = 2\n", "`bind` and `port`"),
        ("port = \"eighty\"\n", "port"),
    ] {
        let path = write("bad.toml", &format!("{text}{model}"));
        let err = format!("{:#}", build(Args::parse_from(["embed-server", "--config", &path])).map(|_| ()).unwrap_err());
        assert!(err.contains(says), "{text}: {err}");
    }
    let path = write("both.toml", "model_id = \"org/m\"\n");
    assert!(build(Args::parse_from(["embed-server", "--config", &path, "--default-model", "x"])).is_err(), "one default");
}

#[test]
fn tei_cors_origins() {
    let m = ["--model-id", "org/model"];
    let origins = |extra: &[&str]| tei(&[&m[..], extra].concat(), &[]).map(|b| b.2.cors_allow_origin);
    assert!(origins(&[]).unwrap().is_empty(), "no CORS unless asked");
    assert_eq!(origins(&["--cors-allow-origin", "https://a.example,http://b.example:8080"]).unwrap(), ["https://a.example", "http://b.example:8080"]);
    assert_eq!(origins(&["--cors-allow-origin", "*"]).unwrap(), ["*"]);
    for bad in ["a.example", "https://a.example/path", "https://"] {
        let err = format!("{:#}", origins(&["--cors-allow-origin", bad]).unwrap_err());
        assert!(err.contains("--cors-allow-origin") && err.contains(bad), "{err}");
    }
}

/// Tokens and keys never reach an error or the options' Debug output.
#[test]
fn secrets_stay_out_of_errors() {
    let args = ["--model-id", "org/model", "--hf-token", "hf_SECRET_token", "--api-key", "SECRET_key"];
    let (pool, registry, _, _) = tei(&args, &[]).unwrap();
    let shown = format!("{:?} {:?}", pool.default_options, registry.get("org/model").unwrap().spec);
    assert!(!shown.contains("hf_SECRET"), "{shown}");
    for extra in [&["--uds-path", "/x"][..], &["--pooling", "splade"], &["--hostname", "nope"], &["--dtype", "f8"]] {
        let err = tei_err(&[&args[..], extra].concat(), &[]);
        assert!(!err.contains("SECRET"), "{err}");
    }
}

#[test]
fn byte_sizes() {
    assert_eq!(parse_bytes("1024").unwrap(), 1024);
    assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
    assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
    assert_eq!(parse_bytes("512MB").unwrap(), 512 << 20);
    assert!(parse_bytes("12Q").is_err());
    assert!(parse_bytes("lots").is_err());
}
