//! The TOML file of `--config`: its top-level settings and one `[models.NAME]` table per model,
//! read as written (unknown keys refused); `build` merges them under the flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use embed_core::LlmReranker;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) bind: Option<SocketAddr>,
    pub(super) default_model: Option<String>,
    pub(super) preload: Option<Vec<String>>,
    pub(super) max_models: Option<usize>,
    pub(super) memory_budget: Option<String>,
    pub(super) warm_tier: Option<String>,
    pub(super) host_budget: Option<String>,
    pub(super) pressure_thresholds: Option<String>,
    pub(super) idle_ttl: Option<u64>,
    pub(super) device: Option<String>,
    pub(super) dtype: Option<String>,
    pub(super) max_batch_tokens: Option<usize>,
    pub(super) threads: Option<usize>,
    pub(super) max_inputs: Option<usize>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) max_concurrent: Option<usize>,
    pub(super) request_timeout: Option<u64>,
    pub(super) no_truncate: Option<bool>,
    pub(super) api_key: Option<String>,
    pub(super) shutdown_deadline: Option<u64>,
    pub(super) shutdown_delay: Option<f64>,
    pub(super) max_connections: Option<usize>,
    pub(super) header_read_timeout: Option<f64>,
    pub(super) keep_alive_timeout: Option<f64>,
    pub(super) allow_degraded_start: Option<bool>,
    pub(super) max_concurrent_bulk: Option<usize>,
    pub(super) no_priorities: Option<bool>,
    pub(super) cpu_threads: Option<usize>,
    // TEI's flags by their names: read into the flags by `Args::with_config_file_tei_keys`.
    #[serde(rename = "model_id")]
    pub(super) _model_id: Option<serde::de::IgnoredAny>,
    #[serde(rename = "revision")]
    pub(super) _revision: Option<serde::de::IgnoredAny>,
    #[serde(rename = "served_model_name")]
    pub(super) _served_model_name: Option<serde::de::IgnoredAny>,
    #[serde(rename = "pooling")]
    pub(super) _pooling: Option<serde::de::IgnoredAny>,
    #[serde(rename = "hostname")]
    pub(super) _hostname: Option<serde::de::IgnoredAny>,
    #[serde(rename = "port")]
    pub(super) _port: Option<serde::de::IgnoredAny>,
    #[serde(rename = "uds_path")]
    pub(super) _uds_path: Option<serde::de::IgnoredAny>,
    #[serde(rename = "max_concurrent_requests")]
    pub(super) _max_concurrent_requests: Option<serde::de::IgnoredAny>,
    #[serde(rename = "max_batch_requests")]
    pub(super) _max_batch_requests: Option<serde::de::IgnoredAny>,
    #[serde(rename = "max_client_batch_size")]
    pub(super) _max_client_batch_size: Option<serde::de::IgnoredAny>,
    #[serde(rename = "auto_truncate")]
    pub(super) _auto_truncate: Option<serde::de::IgnoredAny>,
    #[serde(rename = "default_prompt_name")]
    pub(super) _default_prompt_name: Option<serde::de::IgnoredAny>,
    #[serde(rename = "default_prompt")]
    pub(super) _default_prompt: Option<serde::de::IgnoredAny>,
    #[serde(rename = "dense_path")]
    pub(super) _dense_path: Option<serde::de::IgnoredAny>,
    #[serde(rename = "payload_limit")]
    pub(super) _payload_limit: Option<serde::de::IgnoredAny>,
    #[serde(rename = "hf_token")]
    pub(super) _hf_token: Option<serde::de::IgnoredAny>,
    #[serde(rename = "huggingface_hub_cache")]
    pub(super) _huggingface_hub_cache: Option<serde::de::IgnoredAny>,
    #[serde(rename = "json_output")]
    pub(super) _json_output: Option<serde::de::IgnoredAny>,
    #[serde(rename = "otlp_endpoint")]
    pub(super) _otlp_endpoint: Option<serde::de::IgnoredAny>,
    #[serde(rename = "otlp_service_name")]
    pub(super) _otlp_service_name: Option<serde::de::IgnoredAny>,
    #[serde(rename = "cors_allow_origin")]
    pub(super) _cors_allow_origin: Option<serde::de::IgnoredAny>,
    #[serde(rename = "prometheus_port")]
    pub(super) _prometheus_port: Option<serde::de::IgnoredAny>,
    #[serde(rename = "tokenization_workers")]
    pub(super) _tokenization_workers: Option<serde::de::IgnoredAny>,
    #[serde(rename = "device_id")]
    pub(super) _device_id: Option<serde::de::IgnoredAny>,
    #[serde(rename = "disable_spans")]
    pub(super) _disable_spans: Option<serde::de::IgnoredAny>,
    pub(super) grpc_port: Option<u16>,
    #[serde(default)]
    pub(super) models: BTreeMap<String, FileModel>,
}

/// The config file at `path`, or the empty one.
pub(super) fn read_file_config(path: Option<&std::path::Path>) -> Result<FileConfig> {
    Ok(match path {
        Some(p) => toml::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))?,
        None => FileConfig::default(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileModel {
    pub(super) source: String,
    /// A hub branch, tag or commit to pin (the same as `source = "org/name@revision"`).
    pub(super) revision: Option<String>,
    pub(super) device: Option<String>,
    pub(super) dtype: Option<String>,
    pub(super) max_seq_length: Option<usize>,
    pub(super) pooling: Option<String>,
    pub(super) normalize: Option<bool>,
    pub(super) query_prefix: Option<String>,
    pub(super) document_prefix: Option<String>,
    /// int8: a file of texts to calibrate on, one per line (see `ModelOptions::int8_calibration`).
    pub(super) int8_calibration: Option<std::path::PathBuf>,
    /// int8: "onednn" or "weight-only" (see `ModelOptions::int8_kernel`).
    pub(super) int8_kernel: Option<String>,
    pub(super) ttl: Option<u64>,
    pub(super) pinned: Option<bool>,
    /// "reranker": serve a decoder LLM (Qwen3-Reranker) as a reranker; "auto" (the default):
    /// what the checkpoint is (cross-encoders and converted LLM rerankers are recognised).
    pub(super) kind: Option<String>,
    /// With `kind = "reranker"`: another LLM reranker's prompt and answer tokens, each field
    /// defaulting to Qwen3-Reranker's (see `embed_core::LlmReranker`).
    pub(super) llm_reranker: Option<FileLlmReranker>,
}

/// `[models.NAME.llm_reranker]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLlmReranker {
    pub(super) prefix: Option<String>,
    pub(super) body: Option<String>,
    pub(super) suffix: Option<String>,
    pub(super) default_instruction: Option<String>,
    pub(super) yes_token: Option<String>,
    pub(super) no_token: Option<String>,
}

impl FileLlmReranker {
    pub(super) fn over_qwen3(self) -> LlmReranker {
        let q = LlmReranker::qwen3();
        LlmReranker::qwen3()
            .with_prompt(self.prefix.unwrap_or(q.prefix), self.body.unwrap_or(q.body), self.suffix.unwrap_or(q.suffix))
            .with_default_instruction(self.default_instruction.unwrap_or(q.default_instruction))
            .with_answer_tokens(self.yes_token.unwrap_or(q.yes_token), self.no_token.unwrap_or(q.no_token))
    }
}

/// A model's `kind` and `llm_reranker` entries as `ModelOptions::llm_reranker`.
pub(super) fn llm_reranker(name: &str, kind: Option<&str>, prompt: Option<FileLlmReranker>) -> Result<Option<LlmReranker>> {
    match (kind.map(str::trim), prompt) {
        (Some("reranker"), prompt) => Ok(Some(prompt.map_or_else(LlmReranker::qwen3, FileLlmReranker::over_qwen3))),
        (None | Some("auto"), None) => Ok(None),
        (None | Some("auto"), Some(_)) => bail!("model {name}: [models.{name}.llm_reranker] needs kind = \"reranker\""),
        (Some(other), _) => bail!("model {name}: kind {other:?}: expected \"reranker\" (a decoder LLM served as a reranker) or \"auto\""),
    }
}
