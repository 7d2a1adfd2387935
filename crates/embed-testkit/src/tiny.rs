//! A tiny, randomly initialised BERT model written to disk in the Hugging Face layout.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};
use serde_json::{json, Value};

/// Builder for a tiny BERT model directory.
#[derive(Debug, Clone)]
pub struct TinyModel {
    /// Hidden width.
    pub hidden: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width.
    pub intermediate: usize,
    /// Position embeddings.
    pub max_positions: usize,
    /// sentence-transformers `max_seq_length`.
    pub max_seq_length: usize,
    /// `mean`, `cls`, `max` or `lasttoken`.
    pub pooling: &'static str,
    /// Whether modules.json lists Normalize.
    pub normalize: bool,
    /// Prompts for `config_sentence_transformers.json`.
    pub prompts: Vec<(String, String)>,
    /// Seed of the random weights.
    pub seed: i64,
    /// Standard deviation of the random weights (BERT initialises with 0.02; the default 0.2
    /// gives small models more varied outputs).
    pub weight_std: f64,
}

impl Default for TinyModel {
    fn default() -> Self {
        TinyModel {
            hidden: 32,
            layers: 2,
            heads: 4,
            intermediate: 64,
            max_positions: 128,
            max_seq_length: 64,
            pooling: "mean",
            normalize: true,
            prompts: Vec::new(),
            seed: 7,
            weight_std: 0.2,
        }
    }
}

fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    let words = [
        "the", "a", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was", "hello", "world",
        "query", "passage", "cat", "dog", "model", "text", "memory", "search",
    ];
    v.extend(words.iter().map(|w| w.to_string()));
    for c in ('a'..='z').chain('0'..='9') {
        v.push(c.to_string());
        v.push(format!("##{c}"));
    }
    v.extend([".", ",", "!", "?", ":", ";", "-", "'", "\"", "(", ")"].iter().map(|s| s.to_string()));
    v
}

fn tokenizer_json(vocab: &[String]) -> Value {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let vocab_map: serde_json::Map<String, Value> =
        vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab_map}
    })
}

fn write_json(path: &Path, v: &Value) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create model dir");
    }
    std::fs::write(path, serde_json::to_string_pretty(v).expect("serialise")).expect("write json");
}

impl TinyModel {
    /// all-MiniLM-L6-v2's shape (6 layers, 384 wide, 12 heads, 256 tokens) with random weights
    /// at BERT's initialisation scale: the real architecture's sizes without shipping weights.
    pub fn minilm_shaped() -> Self {
        TinyModel {
            hidden: 384,
            layers: 6,
            heads: 12,
            intermediate: 1536,
            max_positions: 512,
            max_seq_length: 256,
            weight_std: 0.02,
            ..TinyModel::default()
        }
    }

    /// Writes the model into `dir` (created if needed) and returns `dir`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("create model dir");
        let vocab = vocab();
        let (h, i) = (self.hidden as i64, self.intermediate as i64);
        write_json(
            &dir.join("config.json"),
            &json!({
                "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
                "hidden_size": self.hidden, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "intermediate_size": self.intermediate,
                "max_position_embeddings": self.max_positions, "type_vocab_size": 2,
                "vocab_size": vocab.len(), "layer_norm_eps": 1e-12, "pad_token_id": 0,
                "position_embedding_type": "absolute"
            }),
        );
        write_json(&dir.join("tokenizer.json"), &tokenizer_json(&vocab));
        let mut modules = vec![
            json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
            json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
        ];
        if self.normalize {
            modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
        }
        write_json(&dir.join("modules.json"), &Value::Array(modules));
        let mode = |m: &str| self.pooling == m;
        write_json(
            &dir.join("1_Pooling/config.json"),
            &json!({
                "word_embedding_dimension": self.hidden,
                "pooling_mode_cls_token": mode("cls"), "pooling_mode_mean_tokens": mode("mean"),
                "pooling_mode_max_tokens": mode("max"), "pooling_mode_mean_sqrt_len_tokens": false,
                "pooling_mode_lasttoken": mode("lasttoken")
            }),
        );
        write_json(
            &dir.join("sentence_bert_config.json"),
            &json!({"max_seq_length": self.max_seq_length, "do_lower_case": false}),
        );
        if !self.prompts.is_empty() {
            let prompts: serde_json::Map<String, Value> =
                self.prompts.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            write_json(&dir.join("config_sentence_transformers.json"), &json!({"prompts": prompts}));
        }

        // A private generator: libtorch's global one would make the weights depend on what
        // other threads draw at the same time.
        let rng = std::cell::RefCell::new(Normal::new(self.seed as u64, self.weight_std));
        let rand = |shape: &[i64]| {
            let n: i64 = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| rng.borrow_mut().sample()).collect();
            Tensor::from_slice(&values).view(shape)
        };
        let ones = |n: i64| Tensor::ones([n], (Kind::Float, tch::Device::Cpu));
        let mut tensors: Vec<(String, Tensor)> = vec![
            ("embeddings.word_embeddings.weight".into(), rand(&[vocab.len() as i64, h])),
            ("embeddings.position_embeddings.weight".into(), rand(&[self.max_positions as i64, h])),
            ("embeddings.token_type_embeddings.weight".into(), rand(&[2, h])),
            ("embeddings.LayerNorm.weight".into(), ones(h)),
            ("embeddings.LayerNorm.bias".into(), rand(&[h])),
        ];
        for l in 0..self.layers {
            let p = format!("encoder.layer.{l}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                tensors.push((format!("{p}.{name}.weight"), rand(&[out, inp])));
                tensors.push((format!("{p}.{name}.bias"), rand(&[out])));
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                tensors.push((format!("{p}.{name}.weight"), ones(h)));
                tensors.push((format!("{p}.{name}.bias"), rand(&[h])));
            }
        }
        tensors.push(("pooler.dense.weight".into(), rand(&[h, h])));
        tensors.push(("pooler.dense.bias".into(), rand(&[h])));
        Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).expect("write safetensors");
        dir.to_path_buf()
    }

    /// Writes the model into a fresh temporary directory, returned with its guard.
    pub fn write_temp(&self) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = self.write(&tmp.path().join("tiny-bert"));
        (tmp, dir)
    }
}

/// Deterministic normal samples: SplitMix64 and the Box-Muller transform.
struct Normal {
    state: u64,
    std: f64,
    spare: Option<f64>,
}

impl Normal {
    fn new(seed: u64, std: f64) -> Self {
        Normal { state: seed ^ 0x9E37_79B9_7F4A_7C15, std, spare: None }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return (s * self.std) as f32;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        (r * theta.cos() * self.std) as f32
    }
}

/// Truncates `dir/model.safetensors` to half its size: a corrupt weights file.
pub fn corrupt_weights(dir: &Path) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read weights");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write weights");
}
