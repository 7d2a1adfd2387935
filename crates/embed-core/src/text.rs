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
        Ok(TextPrep {
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
        let prefix = self.prefix(options)?;
        let tok_err = |e: tokenizers::Error| Error::Tokenizer { path: self.tokenizer_path.clone(), reason: e.to_string() };
        let max = self.max_seq_length;
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
                Ok(Prepared { seq: Seq { ids, type_ids, pool_skip, poisoned }, truncated })
            })
            .collect()
    }
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
                Ok(Prepared { seq: Seq { ids, type_ids, pool_skip: 0, poisoned: false }, truncated })
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
                Ok(Prepared { seq: Seq { ids, type_ids, pool_skip: 0, poisoned: false }, truncated })
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
