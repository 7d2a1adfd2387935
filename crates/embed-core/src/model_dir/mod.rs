//! Reading a Hugging Face / sentence-transformers model directory.
//!
//! Layout: `config.json` (architecture), `model.safetensors` (or `model.safetensors.index.json` and
//! its shards), `tokenizer.json`, and optionally the
//! sentence-transformers files `modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`
//! and `config_sentence_transformers.json` (prompts).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

pub(crate) mod arch;
pub(crate) mod checkpoint;

use arch::{ArchConfig, Family};
use checkpoint::{INDEX_FILE, SINGLE_FILE, TORCH_FILE};
use crate::rerank::LlmReranker;
use crate::{Error, ModelKind, Result};

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Average of the token vectors under the attention mask.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over the tokens under the mask.
    Max,
    /// The last non-padding token (decoder-style embedders).
    LastToken,
}

impl FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "max" => Ok(Pooling::Max),
            "last_token" | "lasttoken" | "last" => Ok(Pooling::LastToken),
            other => Err(Error::InvalidOption {
                name: "pooling",
                reason: format!("{other:?} is not one of mean, cls, max, last_token"),
            }),
        }
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::LastToken => "last_token",
        })
    }
}

/// Everything read from a model directory, before any tensor is touched.
#[derive(Debug, Clone)]
pub(crate) struct ModelDir {
    /// The directory the files were read from.
    pub(crate) dir: PathBuf,
    /// `model_type` from `config.json` (or the one its `architectures` implies).
    pub(crate) model_type: String,
    /// The encoder's family and shape.
    pub(crate) arch: ArchConfig,
    /// What the model computes (from `architectures` and the sentence-transformers modules).
    pub(crate) kind: ModelKind,
    /// Label names by output index (classifiers and rerankers).
    pub(crate) labels: Vec<String>,
    /// Pooling from `1_Pooling/config.json` (mean when absent, like sentence-transformers).
    pub(crate) pooling: Pooling,
    /// Whether pooling excludes instruction-prompt tokens (`include_prompt: false`).
    pub(crate) exclude_prompt_from_pooling: bool,
    /// Whether `modules.json` lists a `Normalize` module.
    pub(crate) normalize: bool,
    /// sentence-transformers `Dense` modules after pooling, in order.
    pub(crate) dense: Vec<DenseModule>,
    /// `max_seq_length` from `sentence_bert_config.json`, capped by the position embeddings.
    pub(crate) max_seq_length: usize,
    /// `do_lower_case` from `sentence_bert_config.json`: lowercase inputs before tokenizing.
    pub(crate) lowercase: bool,
    /// Named prompts from `config_sentence_transformers.json`.
    pub(crate) prompts: BTreeMap<String, String>,
    /// The prompt applied when the caller names none.
    pub(crate) default_prompt_name: Option<String>,
    /// Path of `model.safetensors`, or of `model.safetensors.index.json` for sharded weights.
    pub(crate) weights: PathBuf,
    /// Path of `tokenizer.json`.
    pub(crate) tokenizer: PathBuf,
    /// Decoder rerankers: the prompt each (query, document) pair is put into.
    pub(crate) llm_reranker: Option<LlmReranker>,
    /// Decoder rerankers: where the score comes from.
    pub(crate) decoder_score: Option<DecoderScore>,
    /// [`DecoderScore::Answers`]: the ids of the no and yes tokens, from the tokenizer.
    pub(crate) answer_ids: Option<[i64; 2]>,
    /// BGE-M3: the ColBERT and sparse heads beside the weights.
    pub(crate) m3: Option<M3Heads>,
    /// A PyLate / ColBERT checkpoint's settings (kind [`ModelKind::MultiVector`]; its Dense
    /// modules project every token).
    pub(crate) colbert: Option<ColbertConfig>,
}

/// BGE-M3's extra heads, as FlagEmbedding saves them beside the XLM-R weights: `torch.save` of
/// an `nn.Linear`'s state dict each (`weight`, `bias`).
#[derive(Debug, Clone)]
pub(crate) struct M3Heads {
    /// `colbert_linear.pt`: `[colbert_dim, hidden]`, over every token after `[CLS]`.
    pub(crate) colbert: PathBuf,
    /// `sparse_linear.pt`: `[1, hidden]`, `relu` of it is each token's lexical weight.
    pub(crate) sparse: PathBuf,
    /// The tokens FlagEmbedding leaves out of the lexical weights: the tokenizer's cls, eos,
    /// pad and unk tokens (as `special_tokens_map.json` / `tokenizer_config.json` name them).
    pub(crate) unused_tokens: Vec<String>,
}

/// PyLate's ColBERT settings from `config_sentence_transformers.json`, with PyLate's defaults
/// for what is absent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ColbertConfig {
    /// The marker token put after the first token of a query (`"[Q] "`); empty: none.
    pub(crate) query_prefix: String,
    /// The marker token of a document (`"[D] "`); empty: none.
    pub(crate) document_prefix: String,
    /// Tokens of a query, marker included; with expansion, queries are padded to it with `[MASK]`.
    pub(crate) query_length: usize,
    /// Tokens of a document at most, marker included.
    pub(crate) document_length: usize,
    /// Pad queries with the mask token to `query_length` (query augmentation).
    pub(crate) do_query_expansion: bool,
    /// Whether the query's real tokens attend to the expansion tokens.
    pub(crate) attend_to_expansion_tokens: bool,
    /// Tokens whose vectors a document drops (punctuation by default).
    pub(crate) skiplist_words: Vec<String>,
}

impl ColbertConfig {
    /// Reads PyLate's fields of `config_sentence_transformers.json` (`v`), PyLate's defaults
    /// for the missing ones.
    fn read(v: &Value, path: &Path) -> Result<ColbertConfig> {
        let text = |name: &str, default: &str| -> Result<String> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(Error::config(path, format!("{name:?} must be a string, not {other}"))),
            }
        };
        let count = |name: &str, default: usize| -> Result<usize> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x.as_u64().filter(|&n| n >= 2).map(|n| n as usize).ok_or_else(|| Error::config(path, format!("{name:?} must be an integer of at least 2, not {x}"))),
            }
        };
        let flag = |name: &str, default: bool| v.get(name).and_then(Value::as_bool).unwrap_or(default);
        let skiplist_words = match v.get("skiplist_words") {
            None | Some(Value::Null) => PUNCTUATION.chars().map(String::from).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|w| w.as_str().map(String::from).ok_or_else(|| Error::config(path, "\"skiplist_words\" must hold strings")))
                .collect::<Result<_>>()?,
            Some(other) => return Err(Error::config(path, format!("\"skiplist_words\" must be a list, not {other}"))),
        };
        let do_query_expansion = flag("do_query_expansion", true);
        Ok(ColbertConfig {
            query_prefix: text("query_prefix", "[Q] ")?,
            document_prefix: text("document_prefix", "[D] ")?,
            query_length: count("query_length", 32)?,
            document_length: count("document_length", 180)?,
            do_query_expansion,
            // PyLate: no expansion, nothing to attend to.
            attend_to_expansion_tokens: do_query_expansion && flag("attend_to_expansion_tokens", false),
            skiplist_words,
        })
    }
}

/// Python's `string.punctuation`, PyLate's default skiplist.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Where a decoder reranker's score comes from, at the last position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecoderScore {
    /// A causal LM (Qwen3-Reranker as published): `logit(yes) - logit(no)`, from the two rows of
    /// the LM head (or of the tied word embeddings) for the answer tokens.
    Answers,
    /// A converted `*ForSequenceClassification`: its one-row `score.weight` (yes row - no row).
    ScoreRow,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

fn opt_bool(v: &Value, name: &str) -> bool {
    v.get(name).and_then(Value::as_bool).unwrap_or(false)
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

fn require_file(path: PathBuf, hint: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingFile { path, hint: hint.to_string() })
    }
}

impl ModelDir {
    /// Reads and validates the configuration files of `dir`.
    pub(crate) fn read(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::InvalidSource {
                source_str: dir.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        let config_path = require_file(dir.join("config.json"), "")?;
        let weights = checkpoint::checkpoint_in(dir).ok_or_else(|| Error::MissingFile {
            path: dir.join(SINGLE_FILE),
            hint: format!(" (nor {INDEX_FILE} nor {TORCH_FILE}: the model has no weights)"),
        })?;
        let tokenizer = require_file(
            dir.join("tokenizer.json"),
            " (a fast-tokenizer tokenizer.json is required)",
        )?;

        let cfg = read_json(&config_path)?;
        let arch = ArchConfig::parse(&cfg, &config_path)?;
        let model_type = arch.model_type.clone();

        // sentence-transformers modules. Without modules.json, sentence-transformers builds
        // Transformer + mean Pooling and does not normalize; so do we.
        let mut pooling = Pooling::Mean;
        let mut exclude_prompt_from_pooling = false;
        let mut normalize = false;
        let mut dense = Vec::new();
        let mut splade = false;
        let mut pylate_dense = false;
        let modules_path = dir.join("modules.json");
        let modules_json = read_optional_json(&modules_path)?;
        let has_modules = modules_json.is_some();
        if let Some(modules) = modules_json {
            let modules: Vec<ModuleEntry> = serde_json::from_value(modules)
                .map_err(|e| Error::config(&modules_path, e.to_string()))?;
            for m in modules {
                let kind = m.kind.rsplit('.').next().unwrap_or(&m.kind);
                match kind {
                    // MLMTransformer: a sparse encoder's transformer with its masked-LM head.
                    "Transformer" | "MLMTransformer" => {}
                    "SpladePooling" => {
                        check_splade_pooling(&dir.join(&m.path).join("config.json"))?;
                        splade = true;
                    }
                    // Normalize has no parameters: sentence-transformers never reads its folder,
                    // which is why published models (MiniLM among them) often lack it.
                    "Normalize" => normalize = true,
                    "Dense" => {
                        pylate_dense |= m.kind.starts_with("pylate.");
                        if normalize {
                            return Err(Error::config(&modules_path, "a Dense module after Normalize is not supported"));
                        }
                        let width = dense.last().map_or(arch.hidden_size, |d: &DenseModule| d.out_features);
                        dense.push(DenseModule::read(&dir.join(&m.path), width)?);
                    }
                    "Pooling" => {
                        let p = dir.join(&m.path).join("config.json");
                        let pc = read_json(&p)?;
                        pooling = pooling_from_config(&pc, &p)?;
                        exclude_prompt_from_pooling =
                            pc.get("include_prompt").and_then(Value::as_bool) == Some(false);
                    }
                    other => {
                        return Err(Error::config(
                            &modules_path,
                            format!("module type {other:?} is not supported (Transformer, MLMTransformer, Pooling, SpladePooling, Dense, Normalize)"),
                        ))
                    }
                }
            }
        }

        let (mut kind, labels) = kind_and_labels(&cfg, &config_path, &arch, splade, has_modules)?;
        // A decoder with a one-label classification head is a converted LLM reranker
        // (Qwen3-Reranker-*-seq-cls): Qwen3-Reranker's prompt unless the options give another.
        let (llm_reranker, decoder_score) = match (kind, arch.family) {
            (ModelKind::Reranker, Family::Decoder) => (Some(LlmReranker::qwen3()), Some(DecoderScore::ScoreRow)),
            _ => (None, None),
        };

        let st_config = read_optional_json(&dir.join("sentence_bert_config.json"))?;
        let st_max = st_config.as_ref().and_then(|v| v.get("max_seq_length").and_then(Value::as_u64)).map(|n| n as usize);
        let lowercase = st_config.as_ref().is_some_and(|v| opt_bool(v, "do_lower_case"));
        // Without a sentence-transformers limit, sentence-transformers (and its CrossEncoder)
        // takes the tokenizer's `model_max_length` (transformers writes 1e30 for "none").
        let tokenizer_max = read_optional_json(&dir.join("tokenizer_config.json"))
            .ok()
            .flatten()
            .and_then(|v| v.get("model_max_length").and_then(Value::as_u64))
            .filter(|&n| (2..1 << 24).contains(&n))
            .map(|n| n as usize);
        let max_seq_length = st_max.or(tokenizer_max).unwrap_or(arch.max_tokens).min(arch.max_tokens);

        let prompts_path = dir.join("config_sentence_transformers.json");
        let mut prompts = BTreeMap::new();
        let mut default_prompt_name = None;
        let mut colbert = None;
        let mut max_seq_length = max_seq_length;
        if let Some(v) = read_optional_json(&prompts_path)? {
            // PyLate writes its settings here (and "model_type": "ColBERT"); its Dense modules
            // run on every token, with no Pooling module.
            let pylate = pylate_dense || v.get("model_type").and_then(Value::as_str) == Some("ColBERT") || v.get("query_prefix").is_some();
            if pylate && kind == ModelKind::Embedding {
                let c = ColbertConfig::read(&v, &prompts_path)?;
                if arch.family != Family::Bert {
                    return Err(Error::config(&prompts_path, format!("PyLate / ColBERT models are supported for the BERT line (BERT, RoBERTa, XLM-R), not {}", arch.model_type)));
                }
                if normalize || has_pooling(dir, &modules_path)? {
                    return Err(Error::config(&modules_path, "a PyLate / ColBERT model has no Pooling or Normalize module (its Dense modules project every token)"));
                }
                let longest = c.query_length.max(c.document_length);
                if longest > arch.max_tokens {
                    return Err(Error::config(&prompts_path, format!("query_length / document_length {longest} exceed the model's {} positions", arch.max_tokens)));
                }
                max_seq_length = longest;
                kind = ModelKind::MultiVector;
                colbert = Some(c);
            }
            if let Some(map) = v.get("prompts").and_then(Value::as_object) {
                for (k, p) in map {
                    let p = p.as_str().ok_or_else(|| {
                        Error::config(&prompts_path, format!("prompt {k:?} must be a string"))
                    })?;
                    prompts.insert(k.clone(), p.to_string());
                }
            }
            default_prompt_name = v.get("default_prompt_name").and_then(Value::as_str).map(String::from);
        }

        let m3 = m3_heads(dir, kind, &arch)?;
        if m3.is_some() && !has_modules {
            // FlagEmbedding's dense output: [CLS], normalised (bge-m3 ships these modules too).
            pooling = Pooling::Cls;
            normalize = true;
        }

        Ok(ModelDir {
            m3,
            colbert,
            dir: dir.to_path_buf(),
            model_type,
            arch,
            kind,
            labels,
            pooling,
            exclude_prompt_from_pooling,
            normalize,
            dense,
            max_seq_length,
            lowercase,
            prompts,
            default_prompt_name,
            weights,
            tokenizer,
            llm_reranker,
            decoder_score,
            answer_ids: None,
        })
    }

    /// Applies [`ModelOptions::llm_reranker`](crate::ModelOptions::llm_reranker): a decoder
    /// causal LM becomes a reranker scored by the answer tokens' logits; a converted decoder
    /// reranker takes the prompt. Any other model refuses it.
    pub(crate) fn serve_as_reranker(&mut self, r: &LlmReranker) -> Result<()> {
        let refuse = |what: String| Error::InvalidOption { name: "llm_reranker", reason: format!("{} is {what}", self.dir.display()) };
        if self.arch.family != Family::Decoder {
            return Err(refuse(format!(
                "a {} model ({} family): LLM rerankers are decoder LLMs (qwen3, qwen2, mistral, llama)",
                self.model_type, self.arch.family
            )));
        }
        match (self.kind, self.decoder_score) {
            (ModelKind::Reranker, Some(DecoderScore::ScoreRow)) => {}
            (ModelKind::Embedding, None) => {
                self.kind = ModelKind::Reranker;
                self.decoder_score = Some(DecoderScore::Answers);
                self.labels = vec![r.yes_token.clone()];
            }
            (kind, _) => return Err(refuse(format!("a {kind} model, which cannot be served as an LLM reranker"))),
        }
        r.body_parts()?;
        self.llm_reranker = Some(r.clone());
        Ok(())
    }
}

/// BGE-M3's heads when `colbert_linear.pt` and `sparse_linear.pt` lie beside an XLM-R
/// embedder's weights; one without the other is refused (FlagEmbedding would draw the missing
/// one at random).
fn m3_heads(dir: &Path, kind: ModelKind, arch: &ArchConfig) -> Result<Option<M3Heads>> {
    let (colbert, sparse) = (dir.join("colbert_linear.pt"), dir.join("sparse_linear.pt"));
    match (colbert.is_file(), sparse.is_file()) {
        (false, false) => return Ok(None),
        (true, true) => {}
        (has_colbert, _) => {
            let missing = if has_colbert { sparse } else { colbert };
            return Err(Error::MissingFile { path: missing, hint: " (a BGE-M3 checkpoint needs colbert_linear.pt and sparse_linear.pt both)".into() });
        }
    }
    if kind != ModelKind::Embedding || arch.family != Family::Bert {
        return Err(Error::config(dir, format!("BGE-M3 heads (colbert_linear.pt, sparse_linear.pt) are supported on a BERT-line embedder, not a {kind} {} model", arch.model_type)));
    }
    let mut unused_tokens = Vec::new();
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let Some(v) = read_optional_json(&dir.join(file))? else { continue };
        for key in ["cls_token", "eos_token", "pad_token", "unk_token"] {
            let token = match v.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(String::from),
                _ => None,
            };
            if let Some(t) = token.filter(|t| !unused_tokens.contains(t)) {
                unused_tokens.push(t);
            }
        }
    }
    if unused_tokens.is_empty() {
        // XLM-R's, as bge-m3's tokenizer names them.
        unused_tokens = ["<s>", "</s>", "<pad>", "<unk>"].map(String::from).to_vec();
    }
    Ok(Some(M3Heads { colbert, sparse, unused_tokens }))
}

/// Whether `modules.json` lists a Pooling module.
fn has_pooling(_dir: &Path, modules_path: &Path) -> Result<bool> {
    let Some(v) = read_optional_json(modules_path)? else { return Ok(false) };
    Ok(v.as_array().is_some_and(|a| a.iter().any(|m| m.get("type").and_then(Value::as_str).is_some_and(|t| t.ends_with("Pooling")))))
}

/// What the checkpoint computes: a `*ForSequenceClassification` head makes a reranker (one
/// label) or a classifier, a SPLADE pooling module (or a bare `*ForMaskedLM` checkpoint) a
/// sparse encoder; anything else is a sentence embedder. Heads exist for the BERT line, and for
/// decoders a one-label classification head (a converted LLM reranker).
fn kind_and_labels(cfg: &Value, path: &Path, arch: &ArchConfig, splade: bool, has_modules: bool) -> Result<(ModelKind, Vec<String>)> {
    let class = cfg.get("architectures").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str).unwrap_or("");
    let (kind, labels) = if class.ends_with("ForSequenceClassification") {
        let labels = labels(cfg, path)?;
        (if labels.len() == 1 { ModelKind::Reranker } else { ModelKind::Classifier }, labels)
    } else if splade || (!has_modules && class.ends_with("ForMaskedLM")) {
        (ModelKind::Sparse, Vec::new())
    } else {
        (ModelKind::Embedding, Vec::new())
    };
    let decoder_reranker = kind == ModelKind::Reranker && arch.family == Family::Decoder;
    if kind != ModelKind::Embedding && arch.family != Family::Bert && !decoder_reranker {
        return Err(Error::config(
            path,
            format!(
                "{kind} models ({class}) are supported for BERT, RoBERTa, XLM-RoBERTa and CamemBERT (and one-label decoder rerankers), not {}",
                arch.model_type
            ),
        ));
    }
    Ok((kind, labels))
}

/// `id2label` in index order (`LABEL_i` for the missing ones), `num_labels` long when given.
fn labels(cfg: &Value, path: &Path) -> Result<Vec<String>> {
    let map = cfg.get("id2label").and_then(Value::as_object);
    let count = match cfg.get("num_labels").and_then(Value::as_u64) {
        Some(n) => n as usize,
        None => map.map_or(2, |m| m.len()),
    };
    if count == 0 {
        return Err(Error::config(path, "a sequence classifier needs at least one label"));
    }
    let mut labels: Vec<String> = (0..count).map(|i| format!("LABEL_{i}")).collect();
    for (k, v) in map.into_iter().flatten() {
        let i: usize = k.parse().map_err(|_| Error::config(path, format!("id2label key {k:?} is not an index")))?;
        let name = v.as_str().ok_or_else(|| Error::config(path, format!("id2label[{k}] must be a string")))?;
        if i >= count {
            return Err(Error::config(path, format!("id2label has index {i}, but the model has {count} labels")));
        }
        labels[i] = name.to_string();
    }
    Ok(labels)
}

/// SPLADE pooling as sentence-transformers writes it: max over tokens of log(1 + relu(x)).
fn check_splade_pooling(path: &Path) -> Result<()> {
    let Some(v) = read_optional_json(path)? else { return Ok(()) };
    let strategy = v.get("pooling_strategy").and_then(Value::as_str).unwrap_or("max");
    let activation = v.get("activation_function").and_then(Value::as_str).unwrap_or("relu");
    if strategy != "max" || activation != "relu" {
        return Err(Error::config(path, format!("SPLADE pooling {strategy:?} with {activation:?} is not supported (only max with relu)")));
    }
    Ok(())
}

/// The activation of a sentence-transformers `Dense` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DenseActivation {
    /// `torch.nn.Identity`.
    Identity,
    /// `torch.nn.Tanh` (the sentence-transformers default).
    Tanh,
    /// `torch.nn.ReLU`.
    Relu,
    /// `torch.nn.GELU`.
    Gelu,
    /// `torch.nn.Sigmoid`.
    Sigmoid,
}

/// A sentence-transformers `Dense` module: a linear projection of the pooled vector and an
/// activation (distiluse, LaBSE and other models with a projection head).
#[derive(Debug, Clone)]
pub(crate) struct DenseModule {
    /// Its `model.safetensors`.
    pub(crate) weights: PathBuf,
    /// Input width.
    pub(crate) in_features: usize,
    /// Output width.
    pub(crate) out_features: usize,
    /// Whether it has a bias.
    pub(crate) bias: bool,
    /// The activation after the projection.
    pub(crate) activation: DenseActivation,
}

impl DenseModule {
    /// Reads the module folder `dir`; `width` is the width of the vectors it receives.
    fn read(dir: &Path, width: usize) -> Result<DenseModule> {
        let path = dir.join("config.json");
        let v = read_json(&path)?;
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| Error::config(&path, format!("missing or non-integer field {name:?}")))
        };
        let (in_features, out_features) = (field("in_features")?, field("out_features")?);
        if v.get("use_residual").and_then(Value::as_bool) == Some(true) {
            return Err(Error::config(&path, "a Dense module with use_residual (PyLate) is not supported"));
        }
        if in_features != width {
            return Err(Error::config(&path, format!("in_features {in_features} does not match the {width}-wide vectors it receives")));
        }
        let act = v.get("activation_function").and_then(Value::as_str).unwrap_or("torch.nn.modules.activation.Tanh");
        let activation = match act.rsplit('.').next().unwrap_or(act) {
            "Identity" => DenseActivation::Identity,
            "Tanh" => DenseActivation::Tanh,
            "ReLU" => DenseActivation::Relu,
            "GELU" => DenseActivation::Gelu,
            "Sigmoid" => DenseActivation::Sigmoid,
            _ => return Err(Error::config(&path, format!("Dense activation {act:?} is not supported (Identity, Tanh, ReLU, GELU, Sigmoid)"))),
        };
        // Older sentence-transformers saved a Dense module's weights with torch.save.
        let weights = [SINGLE_FILE, TORCH_FILE].into_iter().map(|f| dir.join(f)).find(|p| p.is_file()).ok_or_else(|| Error::MissingFile {
            path: dir.join(SINGLE_FILE),
            hint: format!(" (nor {TORCH_FILE}: the Dense module needs its weights)"),
        })?;
        Ok(DenseModule { weights, in_features, out_features, bias: v.get("bias").and_then(Value::as_bool).unwrap_or(true), activation })
    }
}

/// The pooling of a `Pooling` module's `config.json`, in either format: the
/// `pooling_mode_*` booleans (sentence-transformers up to 5), or sentence-transformers 6's
/// `"pooling_mode": "mean"` (a name, or a list of one name). Where a file has both, they must agree.
fn pooling_from_config(pc: &Value, path: &Path) -> Result<Pooling> {
    let unsupported = |mode: &str| Error::config(path, format!("pooling mode {mode} is not supported (mean, cls, max, lasttoken)"));
    let named = match pc.get("pooling_mode") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::String(s)] => Some(s.clone()),
            [] => return Err(Error::config(path, "\"pooling_mode\" is an empty list")),
            _ => return Err(Error::config(path, "several pooling modes at once (concatenated pooling) are not supported")),
        },
        Some(other) => return Err(Error::config(path, format!("\"pooling_mode\" must be a name, not {other}"))),
    };
    let named = match named.as_deref() {
        None => None,
        Some("mean" | "mean_tokens") => Some(Pooling::Mean),
        Some("cls" | "cls_token") => Some(Pooling::Cls),
        Some("max" | "max_tokens") => Some(Pooling::Max),
        Some("lasttoken" | "last_token") => Some(Pooling::LastToken),
        Some(m @ ("mean_sqrt_len_tokens" | "weightedmean" | "weightedmean_tokens")) => return Err(unsupported(m)),
        Some(m) => return Err(Error::config(path, format!("unknown pooling mode {m:?} (mean, cls, max, lasttoken)"))),
    };
    let modes = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_max_tokens", Pooling::Max),
        ("pooling_mode_lasttoken", Pooling::LastToken),
    ];
    let on: Vec<Pooling> = modes.iter().filter(|(k, _)| opt_bool(pc, k)).map(|(_, p)| *p).collect();
    if opt_bool(pc, "pooling_mode_mean_sqrt_len_tokens") {
        return Err(unsupported("mean_sqrt_len_tokens"));
    }
    if opt_bool(pc, "pooling_mode_weightedmean_tokens") {
        return Err(unsupported("weightedmean"));
    }
    match (named, on.as_slice()) {
        (Some(p), []) => Ok(p),
        (Some(p), [q]) if p == *q => Ok(p),
        (Some(p), _) => Err(Error::config(path, format!("\"pooling_mode\" says {p}, the pooling_mode_* flags say otherwise"))),
        (None, [one]) => Ok(*one),
        (None, []) => Err(Error::config(path, "no pooling mode is enabled")),
        (None, _) => Err(Error::config(path, "several pooling modes at once (concatenated pooling) are not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::{pooling_from_config, ColbertConfig, Pooling};
    use serde_json::json;

    #[test]
    fn colbert_settings_take_pylates_defaults() {
        let path = std::path::Path::new("config_sentence_transformers.json");
        let c = ColbertConfig::read(&json!({"model_type": "ColBERT"}), path).unwrap();
        assert_eq!((c.query_prefix.as_str(), c.document_prefix.as_str(), c.query_length, c.document_length), ("[Q] ", "[D] ", 32, 180));
        assert!(c.do_query_expansion && !c.attend_to_expansion_tokens);
        // Python's string.punctuation, one word per character.
        assert_eq!(c.skiplist_words.concat(), "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
        assert_eq!(c.skiplist_words.len(), 32);
        // No expansion: nothing to attend to, whatever the file says.
        let c = ColbertConfig::read(&json!({"do_query_expansion": false, "attend_to_expansion_tokens": true, "query_length": 8}), path).unwrap();
        assert!(!c.do_query_expansion && !c.attend_to_expansion_tokens && c.query_length == 8);
        let err = ColbertConfig::read(&json!({"query_length": 1}), path).unwrap_err().to_string();
        assert!(err.contains("query_length"), "{err}");
        let err = ColbertConfig::read(&json!({"skiplist_words": [1]}), path).unwrap_err().to_string();
        assert!(err.contains("skiplist_words"), "{err}");
    }

    fn pool(v: serde_json::Value) -> Result<Pooling, String> {
        pooling_from_config(&v, std::path::Path::new("1_Pooling/config.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn sentence_transformers_6_names_the_mode() {
        let v6 = |m: &str| json!({"embedding_dimension": 32, "pooling_mode": m, "include_prompt": true});
        assert_eq!(pool(v6("mean")), Ok(Pooling::Mean));
        assert_eq!(pool(v6("cls")), Ok(Pooling::Cls));
        assert_eq!(pool(v6("max")), Ok(Pooling::Max));
        assert_eq!(pool(v6("lasttoken")), Ok(Pooling::LastToken));
        assert_eq!(pool(json!({"pooling_mode": ["cls"]})), Ok(Pooling::Cls));
        let err = pool(v6("weightedmean")).unwrap_err();
        assert!(err.contains("weightedmean") && err.contains("not supported"), "{err}");
        let err = pool(v6("median")).unwrap_err();
        assert!(err.contains("unknown pooling mode \"median\""), "{err}");
        let err = pool(json!({"pooling_mode": ["mean", "max"]})).unwrap_err();
        assert!(err.contains("concatenated"), "{err}");
    }

    #[test]
    fn the_older_flags_still_read_and_must_agree_with_a_name() {
        assert_eq!(pool(json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false})), Ok(Pooling::Cls));
        assert_eq!(pool(json!({"pooling_mode": "mean", "pooling_mode_mean_tokens": true})), Ok(Pooling::Mean));
        let err = pool(json!({"pooling_mode": "mean", "pooling_mode_cls_token": true})).unwrap_err();
        assert!(err.contains("say otherwise"), "{err}");
        let err = pool(json!({"word_embedding_dimension": 32})).unwrap_err();
        assert!(err.contains("no pooling mode"), "{err}");
    }
}
