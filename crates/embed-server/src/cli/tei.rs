//! text-embeddings-inference (TEI) compatibility of the command line: TEI's variables that clap
//! does not read for us, the TEI flags refused with their reason, and TEI's values (pooling
//! names, CORS origins, the listen address) turned into ours.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context, Result};
use embed_core::Pooling;

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

/// Refuses each TEI flag whose meaning cannot apply here, naming the flag and why.
pub(super) fn refuse_inapplicable_tei_flags(args: &Args) -> Result<()> {
    let refuse = |flag: &str, why: &str| -> Result<()> { bail!("{flag} is not supported: {why}") };
    if args.uds_path.is_some() {
        refuse(
            "--uds-path (UDS_PATH)",
            "TEI's router talks to its Python backend over that unix socket; this server runs its models in-process and has no such socket to name. Remove the flag",
        )?;
    }
    if args.otlp_endpoint.is_some() {
        refuse("--otlp-endpoint (OTLP_ENDPOINT)", "this server exports no OpenTelemetry traces; use its logs and GET /metrics. Remove the flag")?;
    }
    if args.otlp_service_name.is_some() {
        refuse("--otlp-service-name (OTLP_SERVICE_NAME)", "it names the service in OpenTelemetry traces, which this server does not export. Remove the flag")?;
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
