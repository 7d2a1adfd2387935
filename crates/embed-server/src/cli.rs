//! The server binary's configuration: flags, `EMBED_*` environment variables and the TOML file
//! (`--config`), in that order of precedence, turned into the pool's and the server's settings.
//!
//! text-embeddings-inference's (TEI's) flags and environment variables are accepted beside ours
//! with TEI's meaning (`--model-id`, `--port`, `MAX_CLIENT_BATCH_SIZE`, …), so a TEI deployment's
//! arguments start this server unchanged; a TEI flag whose meaning cannot apply here is refused
//! at start with the reason, never ignored. TEI's variables whose names our flags already
//! carry an `EMBED_*` variable for (`DTYPE`, `MAX_BATCH_TOKENS`, `API_KEY`) and the ambient
//! `HOSTNAME` and `PORT` are read in one place, [`Args::with_tei_env`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::builder::BoolishValueParser;
use clap::Parser;
use embed_core::{DeviceSpec, HubOptions, HubToken, LlmReranker, ModelOptions, ModelSpec};
use embed_pool::{ModelRegistry, ModelSettings, PoolConfig, WarmMode, WarmTier};
use embed_server::{Limits, ServerConfig, Timeouts};

mod file;
mod tei;
mod values;

use file::{llm_reranker, read_file_config};
use values::{parse_bytes, parse_dtype, parse_host_budget, parse_thresholds};
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
mod tests;
