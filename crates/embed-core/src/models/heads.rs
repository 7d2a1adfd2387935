//! What runs after the encoder, by model kind: sentence-transformers pooling and Dense modules
//! (embedders), a sequence-classification head on the first token (cross-encoders and
//! classifiers), the masked-LM head with SPLADE's pooling (sparse encoders), or a decoder
//! reranker's score at the last token (two LM-head rows, or a converted classifier's row).

use tch::{Device, Kind, Tensor};

use super::bert;
use crate::model_dir::{DecoderScore, DenseActivation, ModelDir, Pooling};
use crate::nn::ffn::Activation;
use crate::nn::{LayerNorm, Linear, Weights};
use super::pooling::pool;
use crate::{Error, ModelKind, Result};

pub(crate) enum Head {
    /// Pooling (the worker's setting), then the Dense modules in order.
    Pooled(Vec<(Linear, DenseActivation)>),
    /// `out(tanh(pre(first token)))`: BERT's pooler and classifier, or RoBERTa's
    /// `classifier.dense` and `classifier.out_proj` (the same computation).
    Classifier { pre: Linear, out: Linear },
    /// The masked-LM head on every token, `log(1 + relu(logits))`, max over the sequence.
    Splade { transform: Linear, act: Activation, norm: LayerNorm, decoder: Linear },
    /// Decoder rerankers, at the last token only: `rows` is `[no; yes]` of the LM head
    /// (`answers`: the output is `yes - no`) or a converted classifier's one score row.
    LastToken { rows: Linear, answers: bool },
}

impl crate::nn::Tensors for Head {
    fn linears<'a>(&'a self, out: &mut Vec<&'a Linear>) {
        match self {
            Head::Pooled(dense) => dense.iter().for_each(|(l, _)| out.push(l)),
            Head::Classifier { pre, out: o } => out.extend([pre, o]),
            // The decoder's weight is the word embeddings (tied): not prepacked.
            Head::Splade { transform, .. } => out.push(transform),
            // Two rows at most, run on one token per input: left in the model's float kind.
            Head::LastToken { .. } => {}
        }
    }

    fn tensors<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        match self {
            Head::Pooled(dense) => dense.iter().for_each(|(l, _)| l.tensors(out)),
            Head::Classifier { pre, out: o } => {
                pre.tensors(out);
                o.tensors(out);
            }
            Head::Splade { transform, norm, decoder, .. } => {
                transform.tensors(out);
                norm.tensors(out);
                decoder.tensors(out);
            }
            Head::LastToken { rows, .. } => rows.tensors(out),
        }
    }
}

impl Head {
    /// Whether the head shares the encoder's word embeddings (SPLADE's tied decoder).
    pub(crate) fn ties_word_embeddings(&self) -> bool {
        matches!(self, Head::Splade { .. })
    }

    /// Reads the head of `dir`'s kind; returns it and its weight bytes. A classifier's or
    /// SPLADE's tensors come from `encoder_file`, the encoder's read of `model.safetensors`,
    /// with the encoder's word embeddings (which a tied masked-LM decoder shares).
    pub(crate) fn load(dir: &ModelDir, device: Device, kind: Kind, encoder_file: Option<(&mut Weights, &Tensor)>) -> Result<(Head, u64)> {
        match dir.kind {
            // A ColBERT model's Dense modules run on each token (`TokenHeads`).
            ModelKind::MultiVector => Ok((Head::Pooled(Vec::new()), 0)),
            ModelKind::Embedding => {
                let mut head = Vec::with_capacity(dir.dense.len());
                let mut bytes = 0;
                for d in &dir.dense {
                    let mut w = Weights::read(&d.weights, "linear.weight", device, kind)?;
                    head.push((w.linear("linear", d.out_features as i64, d.in_features as i64, d.bias)?, d.activation));
                    bytes += w.bytes;
                }
                Ok((Head::Pooled(head), bytes))
            }
            ModelKind::Reranker | ModelKind::Classifier | ModelKind::Sparse => {
                let (w, word) = encoder_file.ok_or_else(|| Error::config(&dir.dir, format!("{} heads are supported for the BERT line only", dir.kind)))?;
                let before = w.bytes;
                let head = match (dir.kind, dir.decoder_score) {
                    (ModelKind::Reranker, Some(score)) => last_token(dir, score, w, word)?,
                    (_, Some(_)) => return Err(Error::config(&dir.dir, format!("decoder {} heads are not supported", dir.kind))),
                    (ModelKind::Sparse, None) => splade(dir, w, word)?,
                    (_, None) => classifier(dir, w)?,
                };
                Ok((head, w.bytes - before))
            }
        }
    }

    /// `[b, len, hidden]` states to one f32 row per input: `[b, out]`. `pool_mask` marks the
    /// tokens pooling sees, `lens` the tokens of each input.
    pub(crate) fn forward(&self, hidden: &Tensor, pool_mask: &Tensor, lens: &[i64], pooling: Pooling) -> Tensor {
        match self {
            Head::Pooled(dense) => project(dense, pool(hidden, pool_mask, pooling)),
            Head::Classifier { pre, out } => out.forward(&pre.forward(&hidden.select(1, 0)).tanh()).to_kind(Kind::Float),
            Head::Splade { transform, act, norm, decoder } => {
                // One input at a time: the logits are [tokens, vocabulary], too large to pad.
                let rows: Vec<Tensor> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        let x = hidden.get(i as i64).narrow(0, 0, n);
                        let logits = decoder.forward(&norm.forward(&act.apply(&transform.forward(&x))));
                        logits.to_kind(Kind::Float).relu().log1p().amax([0i64].as_slice(), false)
                    })
                    .collect();
                Tensor::stack(&rows, 0)
            }
            Head::LastToken { rows, answers } => {
                // Right padding: input i's last token sits at lens[i] - 1. Only that position is
                // projected, and only onto the rows the score needs.
                let (b, _, width) = hidden.size3().expect("hidden is [b, len, hidden]");
                let last: Vec<i64> = lens.iter().map(|&n| n - 1).collect();
                let at = Tensor::from_slice(&last).to_device(hidden.device()).view([b, 1, 1]).expand([b, 1, width], false);
                let x = hidden.gather(1, &at, false).squeeze_dim(1);
                let logits = rows.forward(&x).to_kind(Kind::Float);
                if *answers {
                    (logits.select(1, 1) - logits.select(1, 0)).unsqueeze(1)
                } else {
                    logits
                }
            }
        }
    }
}

/// A decoder reranker's head: the answer tokens' rows of the LM head (the word embeddings when
/// tied; only those rows are read), or a converted classifier's `score.weight`.
fn last_token(dir: &ModelDir, score: DecoderScore, w: &mut Weights, word: &Tensor) -> Result<Head> {
    let (h, vocab) = (dir.arch.hidden_size as i64, dir.arch.vocab_size as i64);
    let crate::models::Details::Decoder(c) = &dir.arch.details else {
        return Err(Error::config(&dir.dir, "LLM reranker heads are supported for decoder LLMs only"));
    };
    match score {
        DecoderScore::Answers => {
            let [no, yes] = dir.answer_ids.ok_or_else(|| Error::config(&dir.dir, "the reranker's answer tokens were not resolved"))?;
            let rows = if c.tie_word_embeddings {
                let picked = word.index_select(0, &Tensor::from_slice(&[no, yes]).to_device(word.device())).contiguous();
                w.bytes += (picked.numel() * picked.kind().elt_size_in_bytes()) as u64;
                picked
            } else {
                w.top(|w| w.take_rows("lm_head.weight", &[vocab, h], &[no, yes]))?
            };
            Ok(Head::LastToken { rows: Linear::new(rows, None), answers: true })
        }
        DecoderScore::ScoreRow => {
            let labels = dir.labels.len() as i64;
            let rows = w.top(|w| w.take("score.weight", &[labels, h]))?;
            Ok(Head::LastToken { rows: Linear::new(rows, None), answers: false })
        }
    }
}

/// Runs the Dense modules on pooled f32 vectors `[b, width]` (in the model's dtype, as
/// sentence-transformers does); returns f32.
fn project(dense: &[(Linear, DenseActivation)], pooled: Tensor) -> Tensor {
    let mut x = pooled;
    for (linear, act) in dense {
        let y = linear.forward(&x.to_kind(linear.weight.kind()));
        x = match act {
            DenseActivation::Identity => y,
            DenseActivation::Tanh => y.tanh(),
            DenseActivation::Relu => y.relu(),
            DenseActivation::Gelu => y.gelu("none"),
            DenseActivation::Sigmoid => y.sigmoid(),
        }
        .to_kind(Kind::Float);
    }
    x
}

fn classifier(dir: &ModelDir, w: &mut Weights) -> Result<Head> {
    let h = dir.arch.hidden_size as i64;
    let labels = dir.labels.len() as i64;
    let (pre, out) = if w.top(|w| Ok(w.has("classifier.out_proj.weight")))? {
        // RoBERTa line: classifier.dense → tanh → classifier.out_proj.
        w.top(|w| Ok((w.linear("classifier.dense", h, h, true)?, w.linear("classifier.out_proj", labels, h, true)?)))?
    } else {
        // BERT: the pooler (dense + tanh on [CLS]) → classifier.
        let pre = w.linear("pooler.dense", h, h, true)?;
        (pre, w.top(|w| w.linear("classifier", labels, h, true))?)
    };
    Ok(Head::Classifier { pre, out })
}

fn splade(dir: &ModelDir, w: &mut Weights, word: &Tensor) -> Result<Head> {
    let (h, vocab) = (dir.arch.hidden_size as i64, dir.arch.vocab_size as i64);
    let crate::models::Details::Bert(c) = &dir.arch.details else {
        return Err(Error::config(&dir.dir, "SPLADE heads are supported for the BERT line only"));
    };
    let (act, eps) = bert::head_settings(c);
    let p = "cls.predictions";
    let (transform, norm) = w.top(|w| Ok((w.linear(&format!("{p}.transform.dense"), h, h, true)?, w.layer_norm(&format!("{p}.transform.LayerNorm"), h, eps, true)?)))?;
    // The decoder is tied to the word embeddings: checkpoints store it once, under the
    // decoder's name (older `torch.save` ones) or only as the word embeddings, which it then
    // shares with the encoder (no second copy).
    let weight = match w.top(|w| Ok(w.has(&format!("{p}.decoder.weight"))))? {
        true => w.top(|w| w.take(&format!("{p}.decoder.weight"), &[vocab, h]))?,
        false => word.shallow_clone(),
    };
    let bias_name = match w.top(|w| Ok(w.has(&format!("{p}.bias"))))? {
        true => format!("{p}.bias"),
        false => format!("{p}.decoder.bias"),
    };
    let bias = w.top(|w| w.take(&bias_name, &[vocab]))?;
    Ok(Head::Splade { transform, act, norm, decoder: Linear::new(weight, Some(bias)) })
}

/// Heads that run on each token rather than on a pooled vector: a multi-vector projection
/// (BGE-M3's `colbert_linear`, a PyLate model's Dense modules) and BGE-M3's lexical weight
/// (`sparse_linear`). Each runs only on the tokens of the inputs that asked for it.
#[derive(Default)]
pub(crate) struct TokenHeads {
    /// The multi-vector projection, in order; empty: the model has none.
    multi: Vec<(Linear, DenseActivation)>,
    /// Tokens left out at the start of each input (BGE-M3 drops `[CLS]`).
    pub(crate) multi_from: usize,
    /// BGE-M3's `sparse_linear`, `[1, hidden]`.
    lexical: Option<Linear>,
}

impl crate::nn::Tensors for TokenHeads {
    fn linears<'a>(&'a self, out: &mut Vec<&'a Linear>) {
        out.extend(self.multi.iter().map(|(l, _)| l));
        // One output row: left in the model's float kind.
    }

    fn tensors<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        self.multi.iter().for_each(|(l, _)| l.tensors(out));
        if let Some(l) = &self.lexical {
            l.tensors(out);
        }
    }
}

impl TokenHeads {
    /// Reads BGE-M3's two `.pt` heads or a ColBERT model's Dense modules; returns them and
    /// their weight bytes.
    pub(crate) fn load(dir: &ModelDir, device: Device, kind: Kind) -> Result<(TokenHeads, u64)> {
        let h = dir.arch.hidden_size as i64;
        if let Some(m3) = &dir.m3 {
            let mut c = Weights::read(&m3.colbert, "weight", device, kind)?;
            // BGEM3FlagModel builds nn.Linear(hidden, hidden) (its colbert_dim -1).
            let colbert = Linear::new(c.take("weight", &[h, h])?, Some(c.take("bias", &[h])?));
            let mut s = Weights::read(&m3.sparse, "weight", device, kind)?;
            let sparse = Linear::new(s.take("weight", &[1, h])?, Some(s.take("bias", &[1])?));
            let heads = TokenHeads { multi: vec![(colbert, DenseActivation::Identity)], multi_from: 1, lexical: Some(sparse) };
            return Ok((heads, c.bytes + s.bytes));
        }
        if dir.kind != ModelKind::MultiVector {
            return Ok((TokenHeads::default(), 0));
        }
        let mut multi = Vec::with_capacity(dir.dense.len());
        let mut bytes = 0;
        for d in &dir.dense {
            let mut w = Weights::read(&d.weights, "linear.weight", device, kind)?;
            multi.push((w.linear("linear", d.out_features as i64, d.in_features as i64, d.bias)?, d.activation));
            bytes += w.bytes;
        }
        Ok((TokenHeads { multi, multi_from: 0, lexical: None }, bytes))
    }

    /// Token states `[n, hidden]` to normalised multi-vectors, f32 `[n, dim]` (F.normalize's
    /// eps 1e-12).
    pub(crate) fn multi(&self, x: &Tensor) -> Tensor {
        let y = if self.multi.is_empty() { x.to_kind(Kind::Float) } else { project(&self.multi, x.shallow_clone()) };
        let norm = y.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
        y / norm
    }

    /// Token states `[n, hidden]` to lexical weights `relu(sparse_linear(x))`, f32 `[n]`.
    pub(crate) fn lexical(&self, x: &Tensor) -> Option<Tensor> {
        self.lexical.as_ref().map(|l| l.forward(x).to_kind(Kind::Float).relu().view([-1]))
    }
}
