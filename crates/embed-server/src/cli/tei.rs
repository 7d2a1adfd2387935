//! text-embeddings-inference (TEI) compatibility of the command line: TEI's variables that clap
//! does not read for us, the TEI flags refused with their reason, and TEI's values (pooling
//! names, CORS origins, the listen address) turned into ours.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use embed_core::Pooling;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::Args;

/// TEI's environment variables that clap does not read for us: `DTYPE`, `MAX_BATCH_TOKENS` and
/// `API_KEY` (our flags of those names read `EMBED_*`), and `HOSTNAME` and `PORT`, which are
/// ambient in containers and only count in a TEI-style start.
#[derive(Debug, Default, Clone)]
pub(super) struct TeiEnv {
    pub(super) dtype: Option<String>,
    pub(super) max_batch_tokens: Option<String>,
    pub(super) api_key: Option<String>,
    pub(super) hostname: Option<String>,
    pub(super) port: Option<String>,
}

impl Args {
    /// Reads TEI's variables that clap does not: `lookup` is `std::env::var` in the binary and
    /// a fixed map in tests (the test process's own `HOSTNAME` or `PORT` must not leak in).
    pub(crate) fn with_tei_env(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        self.tei_env = TeiEnv {
            dtype: get("DTYPE"),
            max_batch_tokens: get("MAX_BATCH_TOKENS"),
            api_key: get("API_KEY"),
            hostname: get("HOSTNAME"),
            port: get("PORT"),
        };
        self
    }
}

/// TEI's flags as keys of the config file (`--model-id` is `model_id`), for
/// [`Args::with_config_file_tei_keys`].
#[derive(Debug, Default, Deserialize)]
struct FileTeiKeys {
    model_id: Option<String>,
    revision: Option<String>,
    served_model_name: Option<String>,
    pooling: Option<String>,
    hostname: Option<String>,
    port: Option<u16>,
    uds_path: Option<String>,
    max_concurrent_requests: Option<usize>,
    max_batch_requests: Option<usize>,
    max_client_batch_size: Option<usize>,
    auto_truncate: Option<bool>,
    default_prompt_name: Option<String>,
    default_prompt: Option<String>,
    dense_path: Option<String>,
    payload_limit: Option<usize>,
    hf_token: Option<String>,
    huggingface_hub_cache: Option<PathBuf>,
    json_output: Option<bool>,
    otlp_endpoint: Option<String>,
    otlp_service_name: Option<String>,
    cors_allow_origin: Option<Origins>,
    prometheus_port: Option<u16>,
    tokenization_workers: Option<usize>,
    device_id: Option<usize>,
    disable_spans: Option<bool>,
    // Ours, to refuse a file that sets one setting by both names.
    bind: Option<IgnoredAny>,
    default_model: Option<IgnoredAny>,
    max_concurrent: Option<IgnoredAny>,
    max_inputs: Option<IgnoredAny>,
    max_body_bytes: Option<IgnoredAny>,
    no_truncate: Option<IgnoredAny>,
}

/// `cors_allow_origin`: a list, or TEI's comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Origins {
    One(String),
    Many(Vec<String>),
}

impl Args {
    /// Sets each TEI flag that neither the command line nor its variable set from the config
    /// file's key of the same name (`model_id = "BAAI/bge-base-en-v1.5"`, `port = 80`,
    /// `auto_truncate = true`, `otlp_endpoint = …`), so a file can say what TEI's flags say
    /// and mean the same, refusals included. A file that sets one setting under both names
    /// (`max_concurrent` and `max_concurrent_requests`) is refused.
    pub(crate) fn with_config_file_tei_keys(mut self) -> Result<Self> {
        let Some(path) = &self.config else { return Ok(self) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f: FileTeiKeys = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let twins = [
            ("max_concurrent", f.max_concurrent.is_some(), "max_concurrent_requests", f.max_concurrent_requests.is_some()),
            ("max_inputs", f.max_inputs.is_some(), "max_client_batch_size", f.max_client_batch_size.is_some()),
            ("max_body_bytes", f.max_body_bytes.is_some(), "payload_limit", f.payload_limit.is_some()),
            ("no_truncate", f.no_truncate.is_some(), "auto_truncate", f.auto_truncate.is_some()),
            ("default_model", f.default_model.is_some(), "model_id", f.model_id.is_some()),
            ("bind", f.bind.is_some(), "hostname", f.hostname.is_some()),
            ("bind", f.bind.is_some(), "port", f.port.is_some()),
        ];
        if let Some((ours, _, theirs, _)) = twins.iter().find(|(_, a, _, b)| *a && *b) {
            bail!("{}: `{ours}` and `{theirs}` (TEI's name) set the same thing: keep one", path.display());
        }
        if self.default_model.is_some() && f.model_id.is_some() {
            bail!("{}: `model_id` is the default model, and --default-model names another: give one", path.display());
        }
        self.model_id = self.model_id.take().or(f.model_id);
        self.revision = self.revision.take().or(f.revision);
        self.served_model_name = self.served_model_name.take().or(f.served_model_name);
        self.pooling = self.pooling.take().or(f.pooling);
        self.hostname = self.hostname.take().or(f.hostname);
        self.port = self.port.take().or(f.port);
        self.uds_path = self.uds_path.take().or(f.uds_path);
        self.max_concurrent_requests = self.max_concurrent_requests.take().or(f.max_concurrent_requests);
        self.max_batch_requests = self.max_batch_requests.take().or(f.max_batch_requests);
        self.max_client_batch_size = self.max_client_batch_size.take().or(f.max_client_batch_size);
        self.auto_truncate = self.auto_truncate.take().or(f.auto_truncate);
        self.default_prompt_name = self.default_prompt_name.take().or(f.default_prompt_name);
        self.default_prompt = self.default_prompt.take().or(f.default_prompt);
        self.dense_path = self.dense_path.take().or(f.dense_path);
        self.payload_limit = self.payload_limit.take().or(f.payload_limit);
        self.hf_token = self.hf_token.take().or(f.hf_token);
        self.huggingface_hub_cache = self.huggingface_hub_cache.take().or(f.huggingface_hub_cache);
        self.json_output = self.json_output.take().or(f.json_output);
        self.otlp_endpoint = self.otlp_endpoint.take().or(f.otlp_endpoint);
        self.otlp_service_name = self.otlp_service_name.take().or(f.otlp_service_name);
        if self.cors_allow_origin.is_empty() {
            self.cors_allow_origin = match f.cors_allow_origin {
                None => Vec::new(),
                Some(Origins::One(list)) => list.split(',').map(str::to_string).collect(),
                Some(Origins::Many(list)) => list,
            };
        }
        self.prometheus_port = self.prometheus_port.take().or(f.prometheus_port);
        self.tokenization_workers = self.tokenization_workers.take().or(f.tokenization_workers);
        self.device_id = self.device_id.take().or(f.device_id);
        self.disable_spans = self.disable_spans.take().or(f.disable_spans);
        Ok(self)
    }
}

/// Refuses each TEI flag whose meaning cannot apply here, naming the flag and why.
pub(super) fn refuse_inapplicable_tei_flags(args: &Args) -> Result<()> {
    let refuse = |flag: &str, why: &str| -> Result<()> { bail!("{flag} is not supported: {why}") };
    if args.uds_path.is_some() {
        refuse(
            "--uds-path (UDS_PATH)",
            "TEI's router talks to its Python backend over that unix socket; this server runs its models in-process and has no such socket to name. Remove the flag",
        )?;
    }
    if args.tokenization_workers.is_some() {
        refuse(
            "--tokenization-workers (TOKENIZATION_WORKERS)",
            "there is no tokenizer worker pool to size: a request's inputs are tokenized on its own task (large requests on tokio's blocking pool). Remove the flag",
        )?;
    }
    if args.device_id.is_some() {
        refuse("--device-id (DEVICE_ID)", "the device is chosen with --device (cpu, cuda, cuda:N, auto); use --device cuda:N instead")?;
    }
    if args.disable_spans == Some(true) {
        refuse("--disable-spans (DISABLE_SPANS)", "log lines always carry the span of the request they belong to (its id, method and path); leaving it out is not implemented. Remove the flag")?;
    }
    if args.dense_path.is_some() {
        refuse(
            "--dense-path (DENSE_PATH)",
            "the Dense modules the model's modules.json lists are applied in order, and choosing another Dense directory is not implemented; point --model-id at a directory whose modules.json names the one you want",
        )?;
    }
    if args.model_id.is_none() {
        for (given, flag) in [
            (args.revision.is_some(), "--revision (REVISION)"),
            (args.served_model_name.is_some(), "--served-model-name (SERVED_MODEL_NAME)"),
            (args.pooling.is_some(), "--pooling (POOLING)"),
            (args.default_prompt.is_some(), "--default-prompt (DEFAULT_PROMPT)"),
            (args.default_prompt_name.is_some(), "--default-prompt-name (DEFAULT_PROMPT_NAME)"),
        ] {
            if given {
                bail!("{flag} applies to the --model-id model, and no --model-id is given; for models under --model or --config, set it in [models.NAME] of the config file");
            }
        }
    }
    Ok(())
}

/// A `--cors-allow-origin` value: `*`, or an origin as browsers send it (`scheme://host[:port]`,
/// no path).
pub(super) fn parse_origin(o: &str) -> Result<axum::http::HeaderValue> {
    let o = o.trim();
    let valid = o == "*"
        || o.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) && !rest.is_empty() && !rest.contains('/')
        });
    if !valid {
        bail!("--cors-allow-origin {o:?}: expected an origin such as https://app.example.com (scheme, host, optional port; no path), or *");
    }
    axum::http::HeaderValue::from_str(o).with_context(|| format!("--cors-allow-origin {o:?} is not a valid header value"))
}

/// TEI's `--pooling` values (cls, mean, splade, last-token) onto ours.
pub(super) fn parse_tei_pooling(s: &str) -> Result<Pooling> {
    match s.trim().to_ascii_lowercase().as_str() {
        "last-token" => Ok(Pooling::LastToken),
        "splade" => bail!(
            "--pooling splade is not supported: SPLADE pooling is taken from a sparse model's modules.json (SpladePooling, with its masked-LM head), and a model without it cannot be made sparse by a flag"
        ),
        other => Ok(other.parse().with_context(|| format!("--pooling {s:?} (TEI's cls, mean, last-token)"))?),
    }
}

/// The address in a TEI-style start: `--hostname` (an IP address), else `HOSTNAME` when it is
/// one, else 0.0.0.0; `--port`, else `PORT`, else 3000 (TEI's defaults).
pub(super) fn tei_address(args: &Args) -> Result<SocketAddr> {
    let ip = match (&args.hostname, &args.tei_env.hostname) {
        (Some(h), _) => h
            .trim()
            .parse::<IpAddr>()
            .map_err(|_| anyhow::anyhow!("--hostname {h:?}: expected the IP address to listen on (TEI's meaning), such as 0.0.0.0 or ::"))?,
        (None, Some(h)) => match h.trim().parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                tracing::info!(hostname = %h, "HOSTNAME is not an IP address (a container sets it to its host name); listening on 0.0.0.0");
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }
        },
        (None, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let port = match (args.port, &args.tei_env.port) {
        (Some(p), _) => p,
        (None, Some(p)) => p.trim().parse::<u16>().with_context(|| format!("PORT={p:?} is not a port number"))?,
        (None, None) => 3000,
    };
    Ok(SocketAddr::new(ip, port))
}
