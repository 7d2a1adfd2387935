//! The model families, one file each, and the dispatch from `config.json` to them.
//!
//! | `model_type` | file | position scheme | attention | feed-forward |
//! |---|---|---|---|---|
//! | `bert` | `bert.rs` | learned, from 0 | plain | GELU MLP, post-norm |
//! | `roberta`, `xlm-roberta`, `camembert` | `bert.rs` | learned, from `pad_token_id + 1` | plain | GELU MLP, post-norm |
//! | `distilbert` | `distilbert.rs` | learned, from 0 | plain | GELU MLP, post-norm |
//! | `mpnet` | `mpnet.rs` | learned from `pad_token_id + 1`, plus relative buckets | score bias | GELU MLP, post-norm |
//! | `modernbert` | `modernbert.rs` | rotary (global and local theta) | global / sliding window | GeGLU, pre-norm, no biases |
//! | `nomic_bert` | `nomic_bert.rs` | rotary | plain | SwiGLU, post-norm, no biases |
//! | `new` (GTE v1.5) | `gte.rs` | rotary (optionally NTK-scaled) | plain | GeGLU, post-norm |
//! | `qwen3`, `qwen2`, `mistral`, `llama` | `decoder.rs` | rotary | causal, grouped-query | SwiGLU, pre-RMSNorm |
//! | `gemma3_text` | `gemma3.rs` | rotary (global and local base) | bidirectional or causal, sliding windows, grouped-query | GELU-tanh GLU, Gemma RMSNorm before and after |
//!
//! Every family runs its projections and feed-forward on the real tokens only and shares the
//! attention of [`crate::nn::attention`]; pooling and normalisation happen outside the
//! models ([`pooling`]).

mod bert;
mod decoder;
mod distilbert;
mod gemma3;
mod gte;
mod heads;
mod modernbert;
mod mpnet;
mod nomic_bert;
mod pooling;


use tch::{Device, Kind, Tensor};

use crate::model_dir::arch::Details;
use crate::model_dir::ModelDir;
use crate::nn::attention::{AttentionPlan, AttentionSupport};
use crate::nn::tuning::Tuning;
use crate::nn::block::PostNormStack;
use crate::nn::{BatchInput, Embeddings, Tensors, Weights};
use crate::{Error, Result};
use crate::nn::tensor_fields;


/// A loaded encoder of any family. Owns every tensor of the model, and lists them all
/// ([`Tensors`]).
pub(crate) trait Encoder: Tensors {
    /// Runs the encoder on a batch and returns the last hidden state padded, `[b, len, hidden]`.
    /// `plan` is the model's attention plan; only a family that can run packed reads it (the
    /// batch's CPU layout is already in `t`).
    fn forward(&self, t: &BatchInput, plan: &AttentionPlan) -> Tensor;
    /// What its attention can run: the packed kernel, the CPU's variable-length kernel on a
    /// batch marked [`BatchInput::varlen`] (key masks, sliding windows, MPNet's distance bias,
    /// the decoders' causal and grouped-query heads), length groups ([`BatchInput::groups`]).
    /// [`AttentionPlan::choose`] picks from it once at load.
    fn attention_support(&self) -> AttentionSupport;
    /// Stores its word table in int8 (`nn::quantize_table`); returns the bytes freed and
    /// held.
    fn quantize_word_table(&self) -> (u64, u64);
    /// The largest tensor (the word embeddings), for the planted-leak test build.
    #[cfg(feature = "planted-leak")]
    fn take_largest_tensor(&mut self) -> Tensor;
}

/// Embeddings and a stack of post-norm blocks: BERT and the RoBERTa line, DistilBERT,
/// NomicBERT and GTE (the families differ in names, positions and feed-forward only).
pub(crate) struct PostNorm {
    pub(crate) emb: Embeddings,
    pub(crate) stack: PostNormStack,
}

impl Encoder for PostNorm {
    fn forward(&self, t: &BatchInput, plan: &AttentionPlan) -> Tensor {
        self.stack.forward(&self.emb.forward(t), t, plan)
    }

    fn attention_support(&self) -> AttentionSupport {
        self.stack.attention_support()
    }

    fn quantize_word_table(&self) -> (u64, u64) {
        self.emb.quantize_words()
    }

    #[cfg(feature = "planted-leak")]
    fn take_largest_tensor(&mut self) -> Tensor {
        std::mem::replace(&mut self.emb.word, Tensor::zeros([1], (Kind::Float, Device::Cpu)))
    }
}

/// A loaded model: the encoder, what follows it (pooling and Dense modules, a classifier, or
/// SPLADE's masked-LM head), where it lives and what it holds.
pub(crate) struct Model {
    encoder: Box<dyn Encoder>,
    /// How its attention runs, chosen at load.
    attention: AttentionPlan,
    head: heads::Head,
    /// Per-token heads (multi-vector, lexical weights), run for the inputs that ask.
    tokens: heads::TokenHeads,
    device: Device,
    /// Bytes held by the weights on the model's device (encoder and head).
    pub(crate) weight_bytes: u64,
    /// The linear layers' weights are in oneDNN's layout ([`Model::prepack`]).
    pub(crate) prepacked: bool,
    /// The model is quantized to int8 ([`Model::quantize_int8`]).
    pub(crate) int8: bool,
}

impl Model {
    /// Loads the encoder of `dir`'s family and its Dense modules onto `device` in `kind`, and
    /// plans its attention under the calling (worker) thread's [`Tuning`]. On any error, every
    /// tensor read so far is dropped before returning.
    pub(crate) fn load(dir: &ModelDir, device: Device, kind: Kind) -> Result<Model> {
        let (weights, cfg) = (dir.weights.as_path(), &dir.arch);
        // A BERT-line checkpoint may carry a task head beside the encoder (classifier, masked
        // LM), a decoder one an LM head or a score row: its tensors are taken from the same read
        // of the file.
        let mut encoder_file = None;
        let (encoder, mut weight_bytes): (Box<dyn Encoder>, u64) = match &cfg.details {
            Details::Bert(c) => {
                let mut w = Weights::read(weights, bert::ANCHOR, device, kind)?;
                let m = bert::load(&mut w, cfg, c)?;
                let bytes = w.bytes;
                // A masked-LM decoder tied to the word embeddings shares them.
                encoder_file = Some((w, m.emb.word.shallow_clone()));
                (Box::new(m), bytes)
            }
            Details::DistilBert(c) => {
                let (m, bytes) = distilbert::load(weights, cfg, c, device, kind)?;
                (Box::new(m), bytes)
            }
            Details::MPNet(c) => {
                let (m, bytes) = mpnet::MPNet::load(weights, cfg, c, device, kind)?;
                (Box::new(m), bytes)
            }
            Details::ModernBert(c) => {
                let (m, bytes) = modernbert::ModernBert::load(weights, cfg, c, device, kind)?;
                (Box::new(m), bytes)
            }
            Details::NomicBert(c) => {
                let (m, bytes) = nomic_bert::load(weights, cfg, c, device, kind)?;
                (Box::new(m), bytes)
            }
            Details::Gte(c) => {
                let (m, bytes) = gte::load(weights, cfg, c, device, kind)?;
                (Box::new(m), bytes)
            }
            Details::Decoder(c) => {
                let mut w = Weights::read(weights, decoder::Decoder::ANCHOR, device, kind)?;
                let m = decoder::Decoder::load(&mut w, cfg, c)?;
                let bytes = w.bytes;
                // A reranker's LM head or score row is read from the same file.
                encoder_file = Some((w, m.word().shallow_clone()));
                (Box::new(m), bytes)
            }
            Details::Gemma3(c) => {
                let (m, bytes) = gemma3::Gemma3::load(weights, cfg, c, device, kind)?;
                (Box::new(m), bytes)
            }
        };
        let (head, head_bytes) = heads::Head::load(dir, device, kind, encoder_file.as_mut().map(|(w, word)| (w, &*word)))?;
        weight_bytes += head_bytes;
        let (tokens, token_bytes) = heads::TokenHeads::load(dir, device, kind)?;
        weight_bytes += token_bytes;
        let attention = AttentionPlan::choose(device, kind, encoder.attention_support(), Tuning::current());
        Ok(Model { encoder, attention, head, tokens, device, weight_bytes, prepacked: false, int8: false })
    }

    pub(crate) fn device(&self) -> Device {
        self.device
    }

    pub(crate) fn forward(&self, t: &BatchInput) -> Tensor {
        self.encoder.forward(t, &self.attention)
    }

    /// The head's output for a batch: one f32 row per input, `[b, out]` (see [`heads::Head::forward`]).
    pub(crate) fn head(&self, hidden: &Tensor, pool_mask: &Tensor, lens: &[i64], pooling: crate::model_dir::Pooling) -> Tensor {
        self.head.forward(hidden, pool_mask, lens, pooling)
    }

    /// How its attention runs (chosen at load).
    pub(crate) fn attention(&self) -> &AttentionPlan {
        &self.attention
    }

    /// The per-token heads (multi-vector, lexical).
    pub(crate) fn token_heads(&self) -> &heads::TokenHeads {
        &self.tokens
    }

    /// Reorders every linear layer's weight once into oneDNN's layout (CPU; worth it in bf16,
    /// where oneDNN's GEMM would otherwise reorder the weight on every call). `batch` is the
    /// number of rows the layout is tuned for. Tied weights (SPLADE's decoder) stay as they are.
    pub(crate) fn prepack(&mut self, batch: i64) -> Result<()> {
        let mut linears = Vec::new();
        self.encoder.linears(&mut linears);
        self.head.linears(&mut linears);
        self.tokens.linears(&mut linears);
        for l in linears {
            l.prepack(batch).map_err(|e| Error::Inference { model: String::new(), message: format!("prepacking a linear layer for oneDNN failed: {e}") })?;
        }
        self.prepacked = true;
        Ok(())
    }

    /// Quantizes the model to int8 on the CPU: every linear layer's weight per output channel
    /// (smoothed as the calibration's inputs say, where the layer ran in it), prepacked for
    /// oneDNN's int8 GEMM at about `batch` rows, and the word embeddings per row (unless a tied
    /// decoder shares them). Embeddings' lookups, norms, attention and pooling stay in f32.
    /// `weight_bytes` becomes what the model holds now.
    pub(crate) fn quantize_int8(&mut self, batch: i64, seen: &crate::nn::Calibration) -> Result<()> {
        self.quantize_with(|l| l.quantize(batch, seen.get(&(l as *const _ as usize))))?;
        self.prepacked = true;
        Ok(())
    }

    /// Quantizes the model's weights to int8 where they are (CUDA, or a CPU without VNNI):
    /// every linear layer's weight per output channel and the word embeddings per row, used by
    /// dequantizing into the activations' kind. `weight_bytes` becomes what the model holds.
    pub(crate) fn quantize_int8_weight_only(&mut self) -> Result<()> {
        self.quantize_with(|l| l.quantize_weight_only())
    }

    fn quantize_with(&mut self, mut quantize: impl FnMut(&crate::nn::Linear) -> std::result::Result<(u64, u64), crate::nn::KernelError>) -> Result<()> {
        let mut linears = Vec::new();
        self.encoder.linears(&mut linears);
        self.head.linears(&mut linears);
        self.tokens.linears(&mut linears);
        let fail = |e: crate::nn::KernelError| Error::Inference { model: String::new(), message: format!("quantizing a linear layer to int8 failed: {e}") };
        for l in linears {
            let (freed, held) = quantize(l).map_err(fail)?;
            self.weight_bytes = self.weight_bytes - freed + held;
        }
        if !self.head.ties_word_embeddings() {
            let (freed, held) = self.encoder.quantize_word_table();
            self.weight_bytes = self.weight_bytes - freed + held;
        }
        self.int8 = true;
        Ok(())
    }

    /// Handles to every tensor the model holds (encoder and head). A tensor the head shares
    /// with the encoder (SPLADE's tied decoder) appears twice.
    pub(crate) fn tensors(&self) -> Vec<Tensor> {
        let mut all = Vec::new();
        self.encoder.tensors(&mut all);
        self.head.tensors(&mut all);
        self.tokens.tensors(&mut all);
        all.into_iter().map(Tensor::shallow_clone).collect()
    }

    #[cfg(feature = "planted-leak")]
    pub(crate) fn take_largest_tensor(&mut self) -> Tensor {
        self.encoder.take_largest_tensor()
    }
}

tensor_fields!(PostNorm: emb, stack);
