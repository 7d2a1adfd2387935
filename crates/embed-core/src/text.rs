//! Text preparation: the model's tokenizer, its prompts and instructions, lowercasing, and
//! truncation to its token limit, as sentence-transformers does them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use crate::model_dir::{DecoderScore, ModelDir};
use crate::rerank::{self, LlmReranker, Part};
use crate::types::{ClassifyInput, EmbedOptions, InputMode, ModelOptions};
use crate::{Error, Result};

/// One tokenized input, ready for the model.
pub(crate) struct Seq {
    pub(crate) ids: Vec<i64>,
    pub(crate) type_ids: Vec<i64>,
    /// Leading tokens (an instruction prompt) left out of pooling.
    pub(crate) pool_skip: usize,
    /// Test hook: makes the forward pass that contains this input panic.
    pub(crate) poisoned: bool,
    /// Trailing tokens no token attends to (a ColBERT query's `[MASK]` expansion when
    /// `attend_to_expansion_tokens` is off): they are computed, attending to the others.
    pub(crate) expansion: usize,
}

/// Everything that turns a caller's text into the token ids the model sees.
pub(crate) struct TextPrep {
    tokenizer: Tokenizer,
    /// The same tokenizer truncating pairs to the limit (`longest_first`), for cross-encoders.
    pair_tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    model: String,
    prompts: BTreeMap<String, String>,
    /// The prompt for inputs given no mode, prompt name or instruction (the options' default
    /// prompt, else the model's).
    default_prompt: String,
    query_prefix: Option<String>,
    document_prefix: Option<String>,
    exclude_prompt_from_pooling: bool,
    lowercase: bool,
    /// Tokens per input at most, special tokens included.
    pub(crate) max_seq_length: usize,
    /// Test hook: an input equal to this makes its forward pass panic.
    panic_on_text: Option<String>,
    /// Decoder rerankers: the prompt pairs are put into.
    llm_prompt: Option<LlmPrompt>,
    /// PyLate / ColBERT models: markers, lengths, expansion and skiplist.
    colbert: Option<ColbertPrep>,
    /// BGE-M3: the token ids left out of the lexical weights (cls, eos, pad, unk).
    pub(crate) lexical_unused: Vec<u32>,
}

/// A ColBERT model's text settings, resolved to token ids.
struct ColbertPrep {
    /// The query / document marker ids (PyLate's `[Q] ` / `[D] `), put after the first token.
    query_marker: Option<i64>,
    document_marker: Option<i64>,
    /// What queries are padded with (the tokenizer's mask token).
    mask_id: i64,
    query_length: usize,
    document_length: usize,
    expansion: bool,
    attend_to_expansion: bool,
    /// Sorted ids whose vectors documents drop.
    skiplist: Vec<u32>,
}

/// A decoder reranker's prompt, tokenized once: the prefix and suffix ids (never truncated), the
/// body's parts, and a tokenizer that cuts the body to what the limit leaves it.
struct LlmPrompt {
    prefix: Vec<i64>,
    suffix: Vec<i64>,
    body: Vec<Part>,
    default_instruction: String,
    body_tokenizer: Tokenizer,
    /// `[no, yes]` token ids (causal-LM rerankers).
    answer_ids: Option<[i64; 2]>,
}

/// One input, tokenized and truncated.
pub(crate) struct Prepared {
    pub(crate) seq: Seq,
    pub(crate) truncated: bool,
}

impl TextPrep {
    /// Reads `dir`'s tokenizer and settles the token limit (`options.max_seq_length` within the
    /// model's positions, else the model's own). Padding and truncation are switched off in the
    /// tokenizer: the worker pads per batch and [`TextPrep::prepare`] truncates.
    pub(crate) fn new(dir: &ModelDir, model: &str, options: &ModelOptions) -> Result<TextPrep> {
        let positions = dir.arch.max_tokens;
        let max_seq_length = match options.max_seq_length {
            None => dir.max_seq_length,
            Some(n) if (2..=positions).contains(&n) => n,
            Some(n) => {
                return Err(Error::InvalidOption { name: "max_seq_length", reason: format!("{n} is outside 2..={positions}") })
            }
        };
        let tok_err = |e: tokenizers::Error| Error::Tokenizer { path: dir.tokenizer.clone(), reason: e.to_string() };
        let mut tokenizer = Tokenizer::from_file(&dir.tokenizer).map_err(tok_err)?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(tok_err)?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > dir.arch.vocab_size {
            return Err(Error::Tokenizer {
                path: dir.tokenizer.clone(),
                reason: format!("vocabulary of {vocab} tokens exceeds the model's vocab_size {}", dir.arch.vocab_size),
            });
        }
        let mut pair_tokenizer = tokenizer.clone();
        pair_tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_seq_length, strategy: TruncationStrategy::LongestFirst, ..Default::default() }))
            .map_err(tok_err)?;
        let llm_prompt = match &dir.llm_reranker {
            Some(r) => Some(llm_prompt(dir, r, &tokenizer, max_seq_length)?),
            None => None,
        };
        let default_prompt = match (&options.default_prompt, &options.default_prompt_name) {
            (Some(p), _) => p.clone(),
            (None, Some(name)) => dir.prompts.get(name).cloned().ok_or_else(|| Error::UnknownPrompt {
                model: model.to_string(),
                name: name.clone(),
                known: if dir.prompts.is_empty() { "none".into() } else { dir.prompts.keys().cloned().collect::<Vec<_>>().join(", ") },
            })?,
            (None, None) => dir.default_prompt_name.as_ref().and_then(|n| dir.prompts.get(n)).cloned().unwrap_or_default(),
        };
        let colbert = match &dir.colbert {
            Some(c) => Some(colbert_prep(dir, c, &tokenizer)?),
            None => None,
        };
        let lexical_unused = dir.m3.as_ref().map_or_else(Vec::new, |m| m.unused_tokens.iter().filter_map(|t| tokenizer.token_to_id(t)).collect());
        Ok(TextPrep {
            colbert,
            lexical_unused,
            llm_prompt,
            tokenizer,
            pair_tokenizer,
            tokenizer_path: dir.tokenizer.clone(),
            model: model.to_string(),
            prompts: dir.prompts.clone(),
            default_prompt,
            query_prefix: options.query_prefix.clone(),
            document_prefix: options.document_prefix.clone(),
            exclude_prompt_from_pooling: dir.exclude_prompt_from_pooling,
            lowercase: dir.lowercase,
            max_seq_length,
            panic_on_text: options.fault_injection().panic_on_text,
        })
    }

    /// A causal-LM reranker's `[no, yes]` answer token ids.
    pub(crate) fn answer_ids(&self) -> Option<[i64; 2]> {
        self.llm_prompt.as_ref().and_then(|p| p.answer_ids)
    }

    /// The token string of `id` (empty when the vocabulary has none).
    pub(crate) fn token(&self, id: u32) -> String {
        self.tokenizer.id_to_token(id).unwrap_or_default()
    }

    /// The text put before every input: the caller's instruction, a named prompt, the
    /// query/document prefix of the input mode, or the model's default prompt.
    fn prefix(&self, options: &EmbedOptions) -> Result<String> {
        if let Some(i) = &options.instruction {
            return Ok(i.clone());
        }
        let prompts = &self.prompts;
        if let Some(name) = &options.prompt_name {
            return prompts.get(name).cloned().ok_or_else(|| Error::UnknownPrompt {
                model: self.model.clone(),
                name: name.clone(),
                known: if prompts.is_empty() { "none".into() } else { prompts.keys().cloned().collect::<Vec<_>>().join(", ") },
            });
        }
        let model_prompt = |keys: &[&str]| keys.iter().find_map(|k| prompts.get(*k)).cloned().unwrap_or_default();
        Ok(match options.mode {
            Some(InputMode::Query) => self.query_prefix.clone().unwrap_or_else(|| model_prompt(&["query"])),
            Some(InputMode::Document) => self.document_prefix.clone().unwrap_or_else(|| model_prompt(&["document", "passage"])),
            None => self.default_prompt.clone(),
        })
    }

    /// Tokenizes `texts` with the prefix applied, truncating (or refusing, when
    /// `options.truncate` is false) inputs over the limit.
    pub(crate) fn prepare(&self, texts: &[String], options: &EmbedOptions) -> Result<Vec<Prepared>> {
        match &self.colbert {
            Some(c) => self.prepare_colbert(c, texts, options),
            None => self.prepare_at(texts, options, self.max_seq_length),
        }
    }

    /// [`TextPrep::prepare`] without the ColBERT steps, at token limit `max`.
    fn prepare_at(&self, texts: &[String], options: &EmbedOptions, max: usize) -> Result<Vec<Prepared>> {
        let prefix = self.prefix(options)?;
        let tok_err = |e: tokenizers::Error| Error::Tokenizer { path: self.tokenizer_path.clone(), reason: e.to_string() };
        // Tokens of the prompt that pooling leaves out (include_prompt = false), as
        // sentence-transformers counts them: the prompt's tokens without its trailing specials.
        let pool_skip = if self.exclude_prompt_from_pooling && !prefix.is_empty() {
            let enc = self.tokenizer.encode(prefix.as_str(), true).map_err(tok_err)?;
            let trailing = enc.get_special_tokens_mask().iter().rev().take_while(|&&m| m == 1).count();
            enc.get_ids().len() - trailing
        } else {
            0
        };
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let mut input = format!("{prefix}{text}");
                if self.lowercase {
                    input = input.to_lowercase();
                }
                let enc = self.tokenizer.encode(input.as_str(), true).map_err(tok_err)?;
                let (mut ids, mut type_ids) = (to_i64(enc.get_ids()), to_i64(enc.get_type_ids()));
                let truncated = ids.len() > max;
                if truncated {
                    if !options.truncate {
                        return Err(Error::InputTooLong { index, tokens: ids.len(), limit: max });
                    }
                    // Keep the head of the text and the trailing special tokens ([SEP], </s>).
                    let trailing = enc.get_special_tokens_mask().iter().rev().take_while(|&&m| m == 1).count().min(max);
                    let keep = max - trailing;
                    let n = ids.len();
                    ids.drain(keep..n - trailing);
                    type_ids.drain(keep..n - trailing);
                }
                let poisoned = self.panic_on_text.as_deref() == Some(text.as_str());
                Ok(Prepared { seq: Seq { ids, type_ids, pool_skip, poisoned, expansion: 0 }, truncated })
            })
            .collect()
    }

    /// A ColBERT model's inputs as PyLate's `ColBERT.tokenize` makes them: truncated to the
    /// side's length less the marker (trailing special tokens kept), the marker put after the
    /// first token, a query padded with the mask token to `query_length` (expansion). Queries
    /// unless `options.mode` says documents (PyLate's `is_query=True` default).
    fn prepare_colbert(&self, c: &ColbertPrep, texts: &[String], options: &EmbedOptions) -> Result<Vec<Prepared>> {
        let query = options.mode != Some(InputMode::Document);
        let (marker, length) = if query { (c.query_marker, c.query_length) } else { (c.document_marker, c.document_length) };
        let max = length - usize::from(marker.is_some());
        let mut out = self.prepare_at(texts, options, max)?;
        for p in &mut out {
            let seq = &mut p.seq;
            if let Some(m) = marker {
                seq.ids.insert(1.min(seq.ids.len()), m);
                seq.type_ids.insert(1.min(seq.type_ids.len()), 0);
            }
            if query && c.expansion && seq.ids.len() < length {
                let pad = length - seq.ids.len();
                seq.ids.extend(std::iter::repeat_n(c.mask_id, pad));
                seq.type_ids.extend(std::iter::repeat_n(0, pad));
                seq.expansion = if c.attend_to_expansion { 0 } else { pad };
            }
        }
        Ok(out)
    }

    /// Whether a document's token `id` keeps its vector (not in the skiplist); always for a
    /// query, and for models without a skiplist.
    pub(crate) fn keeps_vector(&self, id: u32, query: bool) -> bool {
        match &self.colbert {
            Some(c) if !query => c.skiplist.binary_search(&id).is_err(),
            _ => true,
        }
    }

    /// Whether the model is a PyLate / ColBERT one (query and document sides differ).
    pub(crate) fn is_colbert(&self) -> bool {
        self.colbert.is_some()
    }
}

/// Resolves a ColBERT model's markers, mask token and skiplist to ids. PyLate adds missing
/// markers to the vocabulary with fresh random embeddings; a checkpoint without them is refused.
fn colbert_prep(dir: &ModelDir, c: &crate::model_dir::ColbertConfig, tokenizer: &Tokenizer) -> Result<ColbertPrep> {
    let refuse = |reason: String| Error::Tokenizer { path: dir.tokenizer.clone(), reason };
    let marker = |m: &str| -> Result<Option<i64>> {
        if m.is_empty() {
            return Ok(None);
        }
        tokenizer.token_to_id(m).map(|id| Some(i64::from(id))).ok_or_else(|| refuse(format!("the ColBERT marker {m:?} is not a token of the vocabulary")))
    };
    let find = |names: &[&str]| names.iter().find_map(|n| tokenizer.token_to_id(n));
    let mask_id = find(&["[MASK]", "<mask>"]).ok_or_else(|| refuse("no mask token ([MASK] or <mask>) for query expansion".into()))?;
    let unk = find(&["[UNK]", "<unk>"]);
    // As transformers' convert_tokens_to_ids: a word outside the vocabulary is the unknown token.
    let mut skiplist: Vec<u32> = c.skiplist_words.iter().filter_map(|w| tokenizer.token_to_id(w).or(unk)).collect();
    skiplist.sort_unstable();
    skiplist.dedup();
    Ok(ColbertPrep {
        query_marker: marker(&c.query_prefix)?,
        document_marker: marker(&c.document_prefix)?,
        mask_id: i64::from(mask_id),
        query_length: c.query_length,
        document_length: c.document_length,
        expansion: c.do_query_expansion,
        attend_to_expansion: c.attend_to_expansion_tokens,
        skiplist,
    })
}

impl TextPrep {
    /// Tokenizes classifier inputs: single texts as [`TextPrep::prepare`] does (no prompt), pairs
    /// with the tokenizer's pair template. A pair over the limit is cut as sentence-transformers'
    /// CrossEncoder cuts it (`longest_first`): the longer text loses its end until both are
    /// equally long, then both lose tokens in turn; a short query keeps every token.
    ///
    /// A decoder reranker puts each pair into its prompt instead (`instruction`, or the prompt's
    /// default); other models refuse an instruction.
    pub(crate) fn prepare_inputs(&self, inputs: &[ClassifyInput], truncate: bool, instruction: Option<&str>) -> Result<Vec<Prepared>> {
        if let Some(prompt) = &self.llm_prompt {
            return self.prepare_prompted(prompt, inputs, truncate, instruction);
        }
        if instruction.is_some() {
            return Err(Error::InvalidOption {
                name: "instruction",
                reason: format!("model {} is a cross-encoder without an instruction prompt (only LLM rerankers such as Qwen3-Reranker take one)", self.model),
            });
        }
        let tok_err = |e: tokenizers::Error| Error::Tokenizer { path: self.tokenizer_path.clone(), reason: e.to_string() };
        let plain = EmbedOptions::default().with_truncate(truncate).with_instruction(String::new());
        let case = |t: &str| if self.lowercase { t.to_lowercase() } else { t.to_string() };
        let max = self.max_seq_length;
        inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let (a, b) = match input {
                    ClassifyInput::Text(t) => return self.prepare(std::slice::from_ref(t), &plain).map(|mut p| p.remove(0)),
                    ClassifyInput::Pair(a, b) => (a, b),
                };
                let enc = self.pair_tokenizer.encode((case(a), case(b)), true).map_err(tok_err)?;
                let truncated = !enc.get_overflowing().is_empty();
                if truncated && !truncate {
                    let tokens = self.tokenizer.encode((case(a), case(b)), true).map_err(tok_err)?.get_ids().len();
                    return Err(Error::InputTooLong { index, tokens, limit: max });
                }
                let (ids, type_ids) = (to_i64(enc.get_ids()), to_i64(enc.get_type_ids()));
                Ok(Prepared { seq: Seq { ids, type_ids, pool_skip: 0, poisoned: false, expansion: 0 }, truncated })
            })
            .collect()
    }

    /// Pairs in a decoder reranker's prompt: `prefix + body + suffix`, the body (instruction,
    /// query and document) cut at its end when the whole is over the limit, as the
    /// Qwen3-Reranker model card does.
    fn prepare_prompted(&self, prompt: &LlmPrompt, inputs: &[ClassifyInput], truncate: bool, instruction: Option<&str>) -> Result<Vec<Prepared>> {
        let tok_err = |e: tokenizers::Error| Error::Tokenizer { path: self.tokenizer_path.clone(), reason: e.to_string() };
        let instruction = instruction.unwrap_or(&prompt.default_instruction);
        let fixed = prompt.prefix.len() + prompt.suffix.len();
        inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let ClassifyInput::Pair(query, document) = input else {
                    return Err(Error::InvalidOption {
                        name: "inputs",
                        reason: format!("model {} is an LLM reranker: it scores (query, document) pairs, not single texts (input {index})", self.model),
                    });
                };
                let body = rerank::fill(&prompt.body, instruction, query, document);
                let enc = prompt.body_tokenizer.encode(body.as_str(), true).map_err(tok_err)?;
                let truncated = !enc.get_overflowing().is_empty();
                if truncated && !truncate {
                    let tokens = fixed + self.tokenizer.encode(body.as_str(), true).map_err(tok_err)?.get_ids().len();
                    return Err(Error::InputTooLong { index, tokens, limit: self.max_seq_length });
                }
                let mut ids = Vec::with_capacity(fixed + enc.get_ids().len());
                ids.extend_from_slice(&prompt.prefix);
                ids.extend(enc.get_ids().iter().map(|&x| x as i64));
                ids.extend_from_slice(&prompt.suffix);
                let type_ids = vec![0; ids.len()];
                Ok(Prepared { seq: Seq { ids, type_ids, pool_skip: 0, poisoned: false, expansion: 0 }, truncated })
            })
            .collect()
    }

    /// Token ids back to text, special tokens left out when `skip_special_tokens`.
    pub(crate) fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer { path: self.tokenizer_path.clone(), reason: e.to_string() })
    }
}

/// Tokenizes `r`'s prefix and suffix (without special tokens, as the Qwen3-Reranker model card
/// does), checks what room the limit leaves the body, and resolves the answer tokens of a
/// causal-LM reranker.
fn llm_prompt(dir: &ModelDir, r: &LlmReranker, tokenizer: &Tokenizer, max_seq_length: usize) -> Result<LlmPrompt> {
    let tok_err = |e: tokenizers::Error| Error::Tokenizer { path: dir.tokenizer.clone(), reason: e.to_string() };
    let plain = |text: &str| -> Result<Vec<i64>> { Ok(to_i64(tokenizer.encode(text, false).map_err(tok_err)?.get_ids())) };
    let (prefix, suffix) = (plain(&r.prefix)?, plain(&r.suffix)?);
    let room = max_seq_length.checked_sub(prefix.len() + suffix.len()).filter(|&n| n >= 1).ok_or_else(|| Error::InvalidOption {
        name: "max_seq_length",
        reason: format!(
            "{max_seq_length} tokens leave no room for a pair after the reranker prompt's {} prefix and {} suffix tokens",
            prefix.len(),
            suffix.len()
        ),
    })?;
    let mut body_tokenizer = tokenizer.clone();
    body_tokenizer
        .with_truncation(Some(TruncationParams { max_length: room, strategy: TruncationStrategy::LongestFirst, ..Default::default() }))
        .map_err(tok_err)?;
    let answer_ids = match dir.decoder_score {
        Some(DecoderScore::Answers) => {
            let id = |token: &str| {
                tokenizer.token_to_id(token).map(i64::from).ok_or_else(|| Error::Tokenizer {
                    path: dir.tokenizer.clone(),
                    reason: format!("the reranker's answer token {token:?} is not a single token of the vocabulary"),
                })
            };
            Some([id(&r.no_token)?, id(&r.yes_token)?])
        }
        _ => None,
    };
    Ok(LlmPrompt { prefix, suffix, body: r.body_parts()?, default_instruction: r.default_instruction.clone(), body_tokenizer, answer_ids })
}

pub(crate) fn to_i64(v: &[u32]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}
