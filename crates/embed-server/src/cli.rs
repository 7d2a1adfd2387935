//! The server binary's configuration: flags, `EMBED_*` environment variables and the TOML file
//! (`--config`), in that order of precedence, turned into the pool's and the server's settings.
//!
//! text-embeddings-inference's (TEI's) flags and environment variables are accepted beside ours
//! with TEI's meaning (`--model-id`, `--port`, `MAX_CLIENT_BATCH_SIZE`, …), so a TEI deployment's
//! arguments start this server unchanged; a TEI flag whose meaning cannot apply here is refused
//! at start with the reason, never ignored. TEI's variables whose names our flags already
//! carry an `EMBED_*` variable for (`DTYPE`, `MAX_BATCH_TOKENS`, `API_KEY`) and the ambient
//! `HOSTNAME` and `PORT` are read in one place, [`Args::with_tei_env`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::builder::BoolishValueParser;
use clap::Parser;
use embed_core::{DType, DeviceSpec, HubOptions, HubToken, LlmReranker, ModelOptions, ModelSpec};
use embed_pool::{HostBudget, ModelRegistry, ModelSettings, PoolConfig, Pressure, WarmMode, WarmTier};
use embed_server::{Limits, ServerConfig, Timeouts};
use serde::Deserialize;

mod tei;

use tei::{parse_origin, parse_tei_pooling, refuse_inapplicable_tei_flags, tei_address, TeiEnv};

/// Serve text-embedding models over HTTP.
///
/// Routes: POST /embed, /tokenize (TEI); POST /v1/embeddings, GET /v1/models (OpenAI);
/// GET /models, POST /models/{name}/load|unload (admin); GET /info, /health, /ready, /metrics.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub(crate) struct Args {
    /// TOML config file (keys as the long flags with '_' for '-', models under [models.NAME]).
    #[arg(long, env = "EMBED_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080; with TEI's flags, see --hostname).
    #[arg(long, env = "EMBED_BIND", conflicts_with_all = ["hostname", "port"])]
    bind: Option<SocketAddr>,
    /// A model as NAME=SOURCE (a local directory or a hub id); repeatable, or comma-separated in
    /// EMBED_MODELS.
    #[arg(long = "model", env = "EMBED_MODELS", value_delimiter = ',')]
    models: Vec<String>,
    /// A decoder LLM served as a reranker with Qwen3-Reranker's prompt, as NAME=SOURCE (e.g.
    /// rerank=Qwen/Qwen3-Reranker-0.6B); repeatable. In --config: `kind = "reranker"`.
    #[arg(long = "reranker", env = "EMBED_RERANKERS", value_delimiter = ',')]
    rerankers: Vec<String>,
    /// Model used when a request names none (default: the first model).
    #[arg(long, env = "EMBED_DEFAULT_MODEL", conflicts_with = "model_id")]
    default_model: Option<String>,
    /// Models to load before /ready reports ready (default: the default model).
    #[arg(long, env = "EMBED_PRELOAD", value_delimiter = ',')]
    preload: Vec<String>,
    /// Most models loaded at once (LRU eviction of idle models beyond it).
    #[arg(long, env = "EMBED_MAX_MODELS")]
    max_models: Option<usize>,
    /// Memory budget for model weights, in bytes (suffixes K, M, G accepted).
    #[arg(long, env = "EMBED_MEMORY_BUDGET")]
    memory_budget: Option<String>,
    /// Where models evicted from a CUDA device go: `auto` (the warm tier: weights kept in
    /// pinned host memory, restored on the next request much faster than a load; CUDA models
    /// only; the default), `off` (unloaded), `always` (CPU models too; gains nothing).
    #[arg(long, env = "EMBED_WARM_TIER")]
    warm_tier: Option<String>,
    /// Host memory the warm tier may hold: bytes (suffixes K, M, G) or a percentage of the RAM
    /// (default 25%).
    #[arg(long, env = "EMBED_HOST_BUDGET")]
    host_budget: Option<String>,
    /// Memory-pressure thresholds as fractions of a CUDA device's memory in use,
    /// MODERATE,HIGH,CRITICAL (default 0.75,0.90,0.97): at high, idle models are offloaded to
    /// the warm tier; at critical, unloaded.
    #[arg(long, env = "EMBED_PRESSURE_THRESHOLDS")]
    pressure_thresholds: Option<String>,
    /// Unload a model after this many idle seconds (0 = never).
    #[arg(long, env = "EMBED_IDLE_TTL")]
    idle_ttl: Option<u64>,
    /// Device for models: cpu, cuda, cuda:N, auto.
    #[arg(long, env = "EMBED_DEVICE")]
    device: Option<String>,
    /// Precision: f32, f16, bf16, int8 (CPU: int8 linear layers, calibrated at load), or auto
    /// (the default: bf16 for decoder LLMs on CUDA, f32 otherwise). TEI's float32, float16 and
    /// bfloat16 are the same as f32, f16 and bf16; TEI's DTYPE is read when EMBED_DTYPE is unset.
    #[arg(long, env = "EMBED_DTYPE")]
    dtype: Option<String>,
    /// Dynamic-batching budget: padded tokens per forward pass (TEI's MAX_BATCH_TOKENS is read
    /// when EMBED_MAX_BATCH_TOKENS is unset).
    #[arg(long, env = "EMBED_MAX_BATCH_TOKENS")]
    max_batch_tokens: Option<usize>,
    /// libtorch intra-op threads per model on CPU (default: libtorch's, all cores). Set it to
    /// the container's CPU limit.
    #[arg(long, env = "EMBED_THREADS")]
    threads: Option<usize>,
    /// Most inputs in one request.
    #[arg(long, env = "EMBED_MAX_INPUTS", conflicts_with = "max_client_batch_size")]
    max_inputs: Option<usize>,
    /// Largest request body in bytes.
    #[arg(long, env = "EMBED_MAX_BODY_BYTES", conflicts_with = "payload_limit")]
    max_body_bytes: Option<usize>,
    /// Requests served at once; more get 429.
    #[arg(long, env = "EMBED_MAX_CONCURRENT", conflicts_with = "max_concurrent_requests")]
    max_concurrent: Option<usize>,
    /// Whole-request timeout in seconds.
    #[arg(long, env = "EMBED_REQUEST_TIMEOUT")]
    request_timeout: Option<u64>,
    /// Reject inputs longer than the model's limit with 422 instead of truncating them.
    #[arg(long, env = "EMBED_NO_TRUNCATE", conflicts_with = "auto_truncate")]
    no_truncate: bool,
    /// Require `Authorization: Bearer <key>` (all routes but /health, /ready, /metrics). TEI's
    /// API_KEY is read when EMBED_API_KEY is unset.
    #[arg(long, env = "EMBED_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM; releasing the models
    /// takes at most 5 s more.
    #[arg(long, env = "EMBED_SHUTDOWN_DEADLINE")]
    shutdown_deadline: Option<u64>,
    /// Seconds to keep serving after SIGINT/SIGTERM with /ready answering 503 and connections
    /// closing after each response, before new connections are refused (default 0).
    #[arg(long, env = "EMBED_SHUTDOWN_DELAY")]
    shutdown_delay: Option<f64>,
    /// Open connections at most (default 1024, lowered to fit the file-descriptor limit); more
    /// clients wait in the listen backlog.
    #[arg(long, env = "EMBED_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Seconds a client gets to send a complete request head (default 10).
    #[arg(long, env = "EMBED_HEADER_READ_TIMEOUT")]
    header_read_timeout: Option<f64>,
    /// Seconds an idle keep-alive connection stays open between requests (default 75).
    #[arg(long, env = "EMBED_KEEP_ALIVE_TIMEOUT")]
    keep_alive_timeout: Option<f64>,
    /// Keep serving (with /ready 503) when a preload fails, instead of exiting non-zero.
    #[arg(long, env = "EMBED_ALLOW_DEGRADED_START")]
    allow_degraded_start: bool,
    /// Bulk requests served at once, within --max-concurrent (default: three quarters of it);
    /// more bulk requests get 429 while queries are still admitted.
    #[arg(long, env = "EMBED_MAX_CONCURRENT_BULK")]
    max_concurrent_bulk: Option<usize>,
    /// Serve every request in arrival order in full-size batches, ignoring priorities (for
    /// comparison: a query then waits behind queued indexing work).
    #[arg(long, env = "EMBED_NO_PRIORITIES")]
    no_priorities: bool,
    /// CPU: cut bulk batches short while queries are about instead of stopping full-size bulk
    /// passes between encoder layers for them (for comparison).
    #[arg(long, env = "EMBED_NO_LAYER_PREEMPTION")]
    no_layer_preemption: bool,
    /// CPU threads forward passes may use at once, all models together (default: all cores).
    #[arg(long, env = "EMBED_CPU_THREADS")]
    cpu_threads: Option<usize>,
    /// Also serve text-embeddings-inference's gRPC API (package tei.v1) on this port, on the main
    /// address's IP, with the HTTP server's models, limits and API key. Off by default.
    #[arg(long, env = "GRPC_PORT")]
    grpc_port: Option<u16>,

    /// TEI: a model to serve as the default, by hub id (`org/name`, `org/name@revision`) or
    /// directory; named by --served-model-name, else by the id itself. --model adds others.
    #[arg(long, env = "MODEL_ID", help_heading = TEI)]
    model_id: Option<String>,
    /// TEI: the hub revision (branch, tag or commit) of --model-id.
    #[arg(long, env = "REVISION", help_heading = TEI)]
    revision: Option<String>,
    /// TEI: the name the --model-id model is served under (requests' `model`, /v1/models).
    #[arg(long, env = "SERVED_MODEL_NAME", help_heading = TEI)]
    served_model_name: Option<String>,
    /// TEI: the --model-id model's pooling instead of its own: cls, mean, last-token (and max).
    /// TEI's splade is refused: SPLADE pooling comes from a sparse model's modules.json.
    #[arg(long, env = "POOLING", help_heading = TEI)]
    pooling: Option<String>,
    /// TEI: the IP address to listen on (default 0.0.0.0 in a TEI-style start). The HOSTNAME
    /// variable counts only when it is an IP address: containers set it to their host name.
    #[arg(long, help_heading = TEI)]
    hostname: Option<String>,
    /// TEI: the port to listen on (default 3000 in a TEI-style start; PORT is read too).
    #[arg(long, short = 'p', help_heading = TEI)]
    port: Option<u16>,
    /// TEI: refused. TEI's router reaches its Python backend over this socket; this server runs
    /// its models in-process.
    #[arg(long, env = "UDS_PATH", help_heading = TEI)]
    uds_path: Option<String>,
    /// TEI: the same as --max-concurrent.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", help_heading = TEI)]
    max_concurrent_requests: Option<usize>,
    /// TEI: most inputs per forward pass, every model (default: 32 on CPU, 256 on CUDA).
    #[arg(long, env = "MAX_BATCH_REQUESTS", help_heading = TEI)]
    max_batch_requests: Option<usize>,
    /// TEI: the same as --max-inputs (most inputs in one request; 413 above it).
    #[arg(long, env = "MAX_CLIENT_BATCH_SIZE", help_heading = TEI)]
    max_client_batch_size: Option<usize>,
    /// TEI: truncate inputs longer than the model's limit when a request does not say (the
    /// default here; `false` is --no-truncate).
    #[arg(long, env = "AUTO_TRUNCATE", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), help_heading = TEI)]
    auto_truncate: Option<bool>,
    /// TEI: the name of one of the --model-id model's prompts to put before inputs that carry no
    /// prompt of their own.
    #[arg(long, env = "DEFAULT_PROMPT_NAME", conflicts_with = "default_prompt", help_heading = TEI)]
    default_prompt_name: Option<String>,
    /// TEI: a prompt to put before the --model-id model's inputs that carry none of their own.
    #[arg(long, env = "DEFAULT_PROMPT", help_heading = TEI)]
    default_prompt: Option<String>,
    /// TEI: refused. Choosing another Dense module than modules.json lists is not implemented.
    #[arg(long, env = "DENSE_PATH", help_heading = TEI)]
    dense_path: Option<String>,
    /// TEI: the same as --max-body-bytes (largest request body in bytes).
    #[arg(long, env = "PAYLOAD_LIMIT", help_heading = TEI)]
    payload_limit: Option<usize>,
    /// TEI: the hub token for gated and private models (else HF_TOKEN_PATH or the cache's
    /// token file). Never logged.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true, help_heading = TEI)]
    hf_token: Option<String>,
    /// TEI's deprecated name of --hf-token.
    #[arg(long, env = "HF_API_TOKEN", hide_env_values = true, hide = true, conflicts_with = "hf_token")]
    hf_api_token: Option<String>,
    /// TEI: the hub cache directory (where `models--org--name` folders are), for every hub model.
    #[arg(long, env = "HUGGINGFACE_HUB_CACHE", help_heading = TEI)]
    huggingface_hub_cache: Option<PathBuf>,
    /// TEI: log one JSON object per line (level, time, message and fields) instead of text.
    #[arg(long, env = "JSON_OUTPUT", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), help_heading = TEI)]
    json_output: Option<bool>,
    /// TEI: export traces to this OpenTelemetry collector, as OTLP over gRPC without TLS (e.g.
    /// http://localhost:4317): a span per request, with child spans for tokenization, queue
    /// wait and inference, its parent taken from the request's `traceparent` header.
    #[arg(long, env = "OTLP_ENDPOINT", help_heading = TEI)]
    otlp_endpoint: Option<String>,
    /// TEI: the service name of the exported traces (default: embed-server; in a --model-id
    /// start TEI's text-embeddings-inference.server, so a TEI deployment's dashboards keep
    /// matching).
    #[arg(long, env = "OTLP_SERVICE_NAME", help_heading = TEI)]
    otlp_service_name: Option<String>,
    /// TEI: origins whose pages may call the server (CORS), repeatable or comma-separated; `*`
    /// for any. Without it no CORS headers are sent (TEI allows every origin then).
    #[arg(long, env = "CORS_ALLOW_ORIGIN", value_delimiter = ',', help_heading = TEI)]
    cors_allow_origin: Vec<String>,
    /// TEI: also serve GET /metrics on this port, on the main address's IP (the main port keeps
    /// /metrics too). Without it there is no second listener (TEI opens 9000 by default).
    #[arg(long, env = "PROMETHEUS_PORT", help_heading = TEI)]
    prometheus_port: Option<u16>,
    /// TEI: refused. There is no tokenizer worker pool to size.
    #[arg(long, env = "TOKENIZATION_WORKERS", help_heading = TEI)]
    tokenization_workers: Option<usize>,
    /// TEI: refused. Choose the device with --device cuda:N.
    #[arg(long, env = "DEVICE_ID", help_heading = TEI)]
    device_id: Option<usize>,
    /// TEI: refused (unless false). Log lines always carry their request's span.
    #[arg(long, env = "DISABLE_SPANS", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), help_heading = TEI)]
    disable_spans: Option<bool>,
    /// TEI's variables that collide with ours or with common environment (see
    /// [`Args::with_tei_env`]).
    #[arg(skip)]
    tei_env: TeiEnv,
}

const TEI: &str = "text-embeddings-inference (TEI) compatibility";

impl Args {
    /// The port of the metrics listener (TEI's `--prometheus-port`), if one is asked for.
    pub(crate) fn prometheus_port(&self) -> Option<u16> {
        self.prometheus_port
    }

    /// The port of the gRPC listener (`--grpc-port`, else the config file's `grpc_port`), if
    /// one is asked for.
    pub(crate) fn grpc_port(&self) -> Result<Option<u16>> {
        Ok(match self.grpc_port {
            Some(port) => Some(port),
            None => read_file_config(self.config.as_deref())?.grpc_port,
        })
    }

    /// How the binary logs and traces (`--json-output`, `--otlp-endpoint`,
    /// `--otlp-service-name`; with the config file's keys of those names after
    /// [`Args::with_config_file_tei_keys`]). Read before [`build`], which logs.
    pub(crate) fn telemetry(&self) -> Result<TelemetrySettings> {
        let endpoint = self.otlp_endpoint.as_deref().map(|e| e.trim().to_string());
        let service_name = self.otlp_service_name.as_deref().map(|n| n.trim().to_string());
        let otlp = match (endpoint, service_name) {
            (None, Some(_)) => bail!("--otlp-service-name names the service of exported traces: give --otlp-endpoint too"),
            (None, None) => None,
            (Some(endpoint), service_name) => {
                if endpoint.starts_with("https://") {
                    bail!("--otlp-endpoint {endpoint:?}: TLS to the collector is not built in; give an http:// address (a collector or agent beside the server)");
                }
                if !endpoint.strip_prefix("http://").is_some_and(|rest| !rest.is_empty()) {
                    bail!("--otlp-endpoint {endpoint:?}: expected the collector's gRPC address as http://HOST:PORT");
                }
                let default_name = if self.model_id.is_some() { "text-embeddings-inference.server" } else { "embed-server" };
                let service_name = service_name.unwrap_or_else(|| default_name.to_string());
                if service_name.is_empty() {
                    bail!("--otlp-service-name is empty");
                }
                Some(OtlpSettings { endpoint, service_name })
            }
        };
        Ok(TelemetrySettings { json: self.json_output == Some(true), otlp })
    }
}

/// How the binary logs and traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TelemetrySettings {
    /// Logs as one JSON object per line (`--json-output`).
    pub(crate) json: bool,
    /// Traces exported, when asked for (`--otlp-endpoint`).
    pub(crate) otlp: Option<OtlpSettings>,
}

/// Where traces go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OtlpSettings {
    /// The collector's OTLP/gRPC endpoint (`http://HOST:PORT`).
    pub(crate) endpoint: String,
    /// The `service.name` of the exported spans.
    pub(crate) service_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<SocketAddr>,
    default_model: Option<String>,
    preload: Option<Vec<String>>,
    max_models: Option<usize>,
    memory_budget: Option<String>,
    warm_tier: Option<String>,
    host_budget: Option<String>,
    pressure_thresholds: Option<String>,
    idle_ttl: Option<u64>,
    device: Option<String>,
    dtype: Option<String>,
    max_batch_tokens: Option<usize>,
    threads: Option<usize>,
    max_inputs: Option<usize>,
    max_body_bytes: Option<usize>,
    max_concurrent: Option<usize>,
    request_timeout: Option<u64>,
    no_truncate: Option<bool>,
    api_key: Option<String>,
    shutdown_deadline: Option<u64>,
    shutdown_delay: Option<f64>,
    max_connections: Option<usize>,
    header_read_timeout: Option<f64>,
    keep_alive_timeout: Option<f64>,
    allow_degraded_start: Option<bool>,
    max_concurrent_bulk: Option<usize>,
    no_priorities: Option<bool>,
    cpu_threads: Option<usize>,
    // TEI's flags by their names: read into the flags by `Args::with_config_file_tei_keys`.
    #[serde(rename = "model_id")]
    _model_id: Option<serde::de::IgnoredAny>,
    #[serde(rename = "revision")]
    _revision: Option<serde::de::IgnoredAny>,
    #[serde(rename = "served_model_name")]
    _served_model_name: Option<serde::de::IgnoredAny>,
    #[serde(rename = "pooling")]
    _pooling: Option<serde::de::IgnoredAny>,
    #[serde(rename = "hostname")]
    _hostname: Option<serde::de::IgnoredAny>,
    #[serde(rename = "port")]
    _port: Option<serde::de::IgnoredAny>,
    #[serde(rename = "uds_path")]
    _uds_path: Option<serde::de::IgnoredAny>,
    #[serde(rename = "max_concurrent_requests")]
    _max_concurrent_requests: Option<serde::de::IgnoredAny>,
    #[serde(rename = "max_batch_requests")]
    _max_batch_requests: Option<serde::de::IgnoredAny>,
    #[serde(rename = "max_client_batch_size")]
    _max_client_batch_size: Option<serde::de::IgnoredAny>,
    #[serde(rename = "auto_truncate")]
    _auto_truncate: Option<serde::de::IgnoredAny>,
    #[serde(rename = "default_prompt_name")]
    _default_prompt_name: Option<serde::de::IgnoredAny>,
    #[serde(rename = "default_prompt")]
    _default_prompt: Option<serde::de::IgnoredAny>,
    #[serde(rename = "dense_path")]
    _dense_path: Option<serde::de::IgnoredAny>,
    #[serde(rename = "payload_limit")]
    _payload_limit: Option<serde::de::IgnoredAny>,
    #[serde(rename = "hf_token")]
    _hf_token: Option<serde::de::IgnoredAny>,
    #[serde(rename = "huggingface_hub_cache")]
    _huggingface_hub_cache: Option<serde::de::IgnoredAny>,
    #[serde(rename = "json_output")]
    _json_output: Option<serde::de::IgnoredAny>,
    #[serde(rename = "otlp_endpoint")]
    _otlp_endpoint: Option<serde::de::IgnoredAny>,
    #[serde(rename = "otlp_service_name")]
    _otlp_service_name: Option<serde::de::IgnoredAny>,
    #[serde(rename = "cors_allow_origin")]
    _cors_allow_origin: Option<serde::de::IgnoredAny>,
    #[serde(rename = "prometheus_port")]
    _prometheus_port: Option<serde::de::IgnoredAny>,
    #[serde(rename = "tokenization_workers")]
    _tokenization_workers: Option<serde::de::IgnoredAny>,
    #[serde(rename = "device_id")]
    _device_id: Option<serde::de::IgnoredAny>,
    #[serde(rename = "disable_spans")]
    _disable_spans: Option<serde::de::IgnoredAny>,
    grpc_port: Option<u16>,
    #[serde(default)]
    models: BTreeMap<String, FileModel>,
}

/// The config file at `path`, or the empty one.
fn read_file_config(path: Option<&std::path::Path>) -> Result<FileConfig> {
    Ok(match path {
        Some(p) => toml::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))?,
        None => FileConfig::default(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    source: String,
    /// A hub branch, tag or commit to pin (the same as `source = "org/name@revision"`).
    revision: Option<String>,
    device: Option<String>,
    dtype: Option<String>,
    max_seq_length: Option<usize>,
    pooling: Option<String>,
    normalize: Option<bool>,
    query_prefix: Option<String>,
    document_prefix: Option<String>,
    /// int8: a file of texts to calibrate on, one per line (see `ModelOptions::int8_calibration`).
    int8_calibration: Option<std::path::PathBuf>,
    /// int8: "onednn" or "weight-only" (see `ModelOptions::int8_kernel`).
    int8_kernel: Option<String>,
    ttl: Option<u64>,
    pinned: Option<bool>,
    /// "reranker": serve a decoder LLM (Qwen3-Reranker) as a reranker; "auto" (the default):
    /// what the checkpoint is (cross-encoders and converted LLM rerankers are recognised).
    kind: Option<String>,
    /// With `kind = "reranker"`: another LLM reranker's prompt and answer tokens, each field
    /// defaulting to Qwen3-Reranker's (see `embed_core::LlmReranker`).
    llm_reranker: Option<FileLlmReranker>,
}

/// `[models.NAME.llm_reranker]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLlmReranker {
    prefix: Option<String>,
    body: Option<String>,
    suffix: Option<String>,
    default_instruction: Option<String>,
    yes_token: Option<String>,
    no_token: Option<String>,
}

impl FileLlmReranker {
    fn over_qwen3(self) -> LlmReranker {
        let q = LlmReranker::qwen3();
        LlmReranker::qwen3()
            .with_prompt(self.prefix.unwrap_or(q.prefix), self.body.unwrap_or(q.body), self.suffix.unwrap_or(q.suffix))
            .with_default_instruction(self.default_instruction.unwrap_or(q.default_instruction))
            .with_answer_tokens(self.yes_token.unwrap_or(q.yes_token), self.no_token.unwrap_or(q.no_token))
    }
}

/// A model's `kind` and `llm_reranker` entries as `ModelOptions::llm_reranker`.
fn llm_reranker(name: &str, kind: Option<&str>, prompt: Option<FileLlmReranker>) -> Result<Option<LlmReranker>> {
    match (kind.map(str::trim), prompt) {
        (Some("reranker"), prompt) => Ok(Some(prompt.map_or_else(LlmReranker::qwen3, FileLlmReranker::over_qwen3))),
        (None | Some("auto"), None) => Ok(None),
        (None | Some("auto"), Some(_)) => bail!("model {name}: [models.{name}.llm_reranker] needs kind = \"reranker\""),
        (Some(other), _) => bail!("model {name}: kind {other:?}: expected \"reranker\" (a decoder LLM served as a reranker) or \"auto\""),
    }
}

/// A `--dtype` / `dtype =` value: `auto` (or nothing) leaves the choice to the model's family
/// and device (`DType::preferred`), anything else must name a precision.
fn parse_dtype(s: &str) -> Result<Option<DType>> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    Ok(Some(s.parse()?))
}

fn parse_bytes(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mul = match s[i..].to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1u64 << 40,
                other => bail!("memory budget {s:?}: unknown unit {other:?}"),
            };
            (&s[..i], mul)
        }
        None => (s, 1),
    };
    let n: f64 = num.trim().parse().with_context(|| format!("memory budget {s:?} is not a number"))?;
    Ok((n * mul as f64) as u64)
}

/// A host budget: bytes (`8G`) or a percentage of the RAM (`25%`).
fn parse_host_budget(s: &str) -> Result<HostBudget> {
    match s.trim().strip_suffix('%') {
        Some(p) => {
            let p: f64 = p.trim().parse().with_context(|| format!("host budget {s:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                bail!("host budget {s:?}: a percentage of the RAM must be between 0 and 100");
            }
            Ok(HostBudget::FractionOfRam(p / 100.0))
        }
        None => Ok(HostBudget::Bytes(parse_bytes(s)?)),
    }
}

/// `MODERATE,HIGH,CRITICAL` fractions, increasing, each in (0, 1].
fn parse_thresholds(s: &str, base: Pressure) -> Result<Pressure> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>().with_context(|| format!("pressure thresholds {s:?}: {p:?} is not a number")))
        .collect::<Result<_>>()?;
    let [moderate, high, critical] = parts[..] else { bail!("pressure thresholds {s:?}: expected MODERATE,HIGH,CRITICAL") };
    if !(0.0 < moderate && moderate < high && high < critical && critical <= 1.0) {
        bail!("pressure thresholds {s:?}: need 0 < moderate < high < critical <= 1");
    }
    Ok(Pressure { moderate, high, critical, ..base })
}

/// The pool, the models, the server's settings and the address to listen on, from the flags
/// and the config file (flags win).
pub(crate) fn build(args: Args) -> Result<(PoolConfig, ModelRegistry, ServerConfig, SocketAddr)> {
    let args = args.with_config_file_tei_keys()?;
    refuse_inapplicable_tei_flags(&args)?;
    // TEI's address: from its flags (before the config file's `bind`), or in a TEI-style start
    // from HOSTNAME, PORT and its defaults (after it).
    let tei_flags = args.hostname.is_some() || args.port.is_some();
    let tei_bind = (args.bind.is_none() && (tei_flags || args.model_id.is_some())).then(|| tei_address(&args)).transpose()?;
    let (tei_flag_address, tei_default_address) = if tei_flags { (tei_bind, None) } else { (None, tei_bind) };
    let file = read_file_config(args.config.as_deref())?;
    let device: DeviceSpec = args.device.or(file.device).map(|d| d.parse()).transpose()?.unwrap_or_default();
    let dtype = args.dtype.or(args.tei_env.dtype).or(file.dtype).map(|d| parse_dtype(&d)).transpose()?.flatten();
    // The kernels' switches come from the EMBED_* variables (embed-core reads no environment).
    let mut base = ModelOptions::default().with_device(device).with_tuning(embed_core::Tuning::from_env());
    base.dtype = dtype;
    let tei_max_batch_tokens = args
        .tei_env
        .max_batch_tokens
        .map(|n| n.trim().parse::<usize>().with_context(|| format!("MAX_BATCH_TOKENS={n:?} is not a number")))
        .transpose()?;
    if let Some(n) = args.max_batch_tokens.or(tei_max_batch_tokens).or(file.max_batch_tokens) {
        base.max_batch_tokens = Some(n);
    }
    if let Some(n) = args.max_batch_requests {
        if n == 0 {
            bail!("--max-batch-requests must be at least 1");
        }
        base.max_batch_size = Some(n);
    }
    if args.hf_api_token.is_some() {
        tracing::warn!("--hf-api-token (HF_API_TOKEN) is TEI's deprecated name of --hf-token (HF_TOKEN)");
    }
    base.hub = HubOptions::new(args.huggingface_hub_cache, args.hf_token.or(args.hf_api_token).and_then(HubToken::new));
    if let Some(n) = args.threads.or(file.threads) {
        if n == 0 {
            bail!("threads must be at least 1");
        }
        base.threads = Some(n);
    }
    if args.no_priorities || file.no_priorities.unwrap_or(false) {
        base.priorities = Some(false);
    }
    if args.no_layer_preemption {
        base.layer_preemption = Some(false);
    }
    if let Some(n) = args.cpu_threads.or(file.cpu_threads) {
        if n == 0 {
            bail!("cpu_threads must be at least 1");
        }
        embed_core::set_cpu_thread_budget(n);
    }

    let mut registry = ModelRegistry::new();
    let mut order = Vec::new();
    for (name, m) in file.models {
        let mut o = base.clone();
        if let Some(d) = m.device {
            o.device = d.parse()?;
        }
        if let Some(d) = m.dtype {
            o.dtype = parse_dtype(&d)?;
        }
        o.max_seq_length = m.max_seq_length;
        o.pooling = m.pooling.map(|p| p.parse()).transpose()?;
        o.normalize = m.normalize;
        o.query_prefix = m.query_prefix;
        o.document_prefix = m.document_prefix;
        o.int8_kernel = m.int8_kernel.map(|k| k.parse()).transpose()?;
        o.llm_reranker = llm_reranker(&name, m.kind.as_deref(), m.llm_reranker)?;
        if let Some(path) = m.int8_calibration {
            let text = std::fs::read_to_string(&path).with_context(|| format!("model {name}: reading int8_calibration {}", path.display()))?;
            o.int8_calibration = Some(text.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect());
        }
        let mut settings = ModelSettings::default();
        if let Some(t) = m.ttl {
            settings = settings.with_ttl(Duration::from_secs(t));
        }
        settings = settings.with_pinned(m.pinned.unwrap_or(false));
        let source = match &m.revision {
            None => m.source,
            Some(_) if m.source.contains('@') => bail!("model {name}: give the revision either in `source` (after '@') or as `revision`, not both"),
            Some(rev) => format!("{}@{rev}", m.source),
        };
        registry.insert(name.clone(), ModelSpec::new(source).named(name.clone()).with_options(o), settings);
        order.push(name);
    }
    let tei_model = match args.model_id {
        None => None,
        Some(id) => {
            let id = id.trim().to_string();
            let source = match &args.revision {
                None => id.clone(),
                Some(_) if id.contains('@') => bail!("--model-id {id:?} names a revision after '@' and --revision gives another: give one"),
                Some(_) if std::path::Path::new(&id).is_dir() => bail!("--revision applies to a hub id, and --model-id {id:?} is a directory"),
                Some(rev) => format!("{id}@{}", rev.trim()),
            };
            let name = args.served_model_name.map(|n| n.trim().to_string()).unwrap_or_else(|| id.clone());
            if name.is_empty() {
                bail!("--served-model-name is empty");
            }
            if registry.contains(&name) {
                bail!("--model-id is served as {name:?}, and the config file names another model so; pick another --served-model-name");
            }
            let mut o = base.clone();
            o.pooling = args.pooling.as_deref().map(parse_tei_pooling).transpose()?;
            o.default_prompt = args.default_prompt;
            o.default_prompt_name = args.default_prompt_name;
            registry.insert(name.clone(), ModelSpec::new(source).named(name.clone()).with_options(o), ModelSettings::default());
            order.insert(0, name.clone());
            Some(name)
        }
    };
    let flagged = args.models.iter().map(|e| ("--model", e, None)).chain(args.rerankers.iter().map(|e| ("--reranker", e, Some(LlmReranker::qwen3()))));
    for (flag, entry, llm_reranker) in flagged {
        let (name, source) = entry.split_once('=').with_context(|| format!("{flag} {entry:?}: expected NAME=SOURCE"))?;
        if tei_model.as_deref() == Some(name) {
            bail!("{flag} {name}=…: --model-id is already served as {name:?}; pick another name");
        }
        let mut options = base.clone();
        options.llm_reranker = llm_reranker;
        registry.insert(name, ModelSpec::new(source).named(name).with_options(options), ModelSettings::default());
        order.push(name.to_string());
    }
    if registry.is_empty() {
        bail!("no models configured: pass --model NAME=SOURCE or --model-id ID (or [models.NAME] in --config)");
    }
    let single_tei_model = tei_model.is_some() && registry.len() == 1;
    let default_model = tei_model.or(args.default_model).or(file.default_model).unwrap_or_else(|| order[0].clone());
    if !registry.contains(&default_model) {
        bail!("default model {default_model:?} is not among the configured models");
    }

    let mut pool = PoolConfig::default();
    if let Some(n) = args.max_models.or(file.max_models) {
        pool = pool.with_max_models(n);
    }
    if let Some(b) = args.memory_budget.or(file.memory_budget) {
        pool = pool.with_memory_budget(Some(parse_bytes(&b)?));
    }
    let mut warm = WarmTier::default();
    if let Some(m) = args.warm_tier.or(file.warm_tier) {
        warm.mode = match m.trim().to_ascii_lowercase().as_str() {
            "auto" => WarmMode::Auto,
            "off" => WarmMode::Off,
            "always" => WarmMode::Always,
            other => bail!("warm_tier {other:?}: expected auto, off or always"),
        };
    }
    if let Some(b) = args.host_budget.or(file.host_budget) {
        warm.host_budget = parse_host_budget(&b)?;
    }
    pool = pool.with_warm_tier(warm);
    if let Some(t) = args.pressure_thresholds.or(file.pressure_thresholds) {
        let pressure = parse_thresholds(&t, pool.pressure)?;
        pool = pool.with_pressure(pressure);
    }
    if let Some(t) = args.idle_ttl.or(file.idle_ttl) {
        pool = pool.with_default_ttl((t > 0).then(|| Duration::from_secs(t)));
    }
    pool = pool.with_default_options(base);

    let cors_origins = args.cors_allow_origin.iter().map(|o| parse_origin(o)).collect::<Result<Vec<_>>>()?;
    let mut limits = Limits::default();
    let positive = |name: &str, n: usize| if n == 0 { bail!("{name} must be at least 1") } else { Ok(n) };
    if let Some(n) = args.max_inputs.or(args.max_client_batch_size).or(file.max_inputs) {
        limits.max_inputs = positive("max_inputs", n)?;
    }
    if let Some(n) = args.max_body_bytes.or(args.payload_limit).or(file.max_body_bytes) {
        limits.max_body_bytes = positive("max_body_bytes", n)?;
    }
    if let Some(n) = args.max_concurrent.or(args.max_concurrent_requests).or(file.max_concurrent) {
        limits.max_concurrent = positive("max_concurrent", n)?;
    }
    if let Some(n) = args.max_concurrent_bulk.or(file.max_concurrent_bulk) {
        limits.max_concurrent_bulk = Some(positive("max_concurrent_bulk", n)?);
    }
    if let Some(n) = args.max_connections.or(file.max_connections) {
        limits.max_connections = positive("max_connections", n)?;
    }
    let seconds = |name: &str, s: f64| {
        if s.is_finite() && s > 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            bail!("{name} must be a positive number of seconds, not {s}")
        }
    };
    let mut timeouts = Timeouts::default();
    if let Some(s) = args.header_read_timeout.or(file.header_read_timeout) {
        timeouts.header_read = seconds("header_read_timeout", s)?;
    }
    if let Some(s) = args.keep_alive_timeout.or(file.keep_alive_timeout) {
        timeouts.keep_alive = seconds("keep_alive_timeout", s)?;
    }
    if let Some(s) = args.request_timeout.or(file.request_timeout) {
        timeouts.request = Duration::from_secs(s);
    }
    if let Some(s) = args.shutdown_deadline.or(file.shutdown_deadline) {
        timeouts.shutdown = Duration::from_secs(s);
    }
    if let Some(s) = args.shutdown_delay.or(file.shutdown_delay) {
        if !(s.is_finite() && s >= 0.0) {
            bail!("shutdown_delay must be zero or a positive number of seconds, not {s}");
        }
        timeouts.shutdown_delay = Duration::from_secs_f64(s);
    }
    limits.truncate_by_default = match args.auto_truncate {
        Some(auto) => auto,
        None => !(args.no_truncate || file.no_truncate.unwrap_or(false)),
    };
    let preload = if !args.preload.is_empty() { args.preload } else { file.preload.unwrap_or_else(|| vec![default_model.clone()]) };
    let config = ServerConfig::new(default_model)
        .with_preload(preload)
        .with_limits(limits)
        .with_timeouts(timeouts)
        .with_api_key(args.api_key.or(args.tei_env.api_key).or(file.api_key))
        .with_allow_degraded_start(args.allow_degraded_start || file.allow_degraded_start.unwrap_or(false))
        // TEI's start serves one model whatever a request's `model` says; beside other models,
        // names keep their meaning.
        .with_any_model_name(single_tei_model)
        .with_cors_allow_origin(cors_origins);
    // --bind, then TEI's --hostname/--port, then the file, then TEI's defaults in a TEI-style
    // start (HOSTNAME/PORT, 0.0.0.0:3000), then ours.
    let bind = args
        .bind
        .or(tei_flag_address)
        .or(file.bind)
        .or(tei_default_address)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    Ok((pool, registry, config, bind))
}

#[cfg(test)]
mod tests {
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
}
