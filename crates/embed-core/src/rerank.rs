//! Decoder LLMs as rerankers (Qwen3-Reranker and others of its kind): the prompt a (query,
//! document) pair is put into, and the two answer tokens whose logits at the last position give
//! the score, `sigmoid(logit("yes") - logit("no"))` (the softmax over the two, taking "yes").

use crate::{Error, Result};

/// How a decoder LLM scores a (query, document) pair: the prompt it reads (a fixed `prefix`, the
/// `body` with the instruction, query and document put in, a fixed `suffix`) and the two tokens
/// whose logits at the last position are compared.
///
/// [`LlmReranker::qwen3`] (the default) is the prompt of the Qwen3-Reranker model card. Set it
/// as [`ModelOptions::llm_reranker`](crate::ModelOptions::llm_reranker) to serve a
/// `*ForCausalLM` checkpoint as a [`ModelKind::Reranker`](crate::ModelKind::Reranker); a
/// converted `*ForSequenceClassification` decoder reranker is recognised from its config and
/// uses this prompt too (its answer tokens are then unused: the score row is in the checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LlmReranker {
    /// Tokenized without special tokens and put before every pair, never truncated.
    pub prefix: String,
    /// The pair's text, with `{instruction}`, `{query}` and `{document}` replaced (the last two
    /// must appear, once each). Tokenized as one text and cut at its end when the pair is over the
    /// model's limit.
    pub body: String,
    /// Tokenized without special tokens and put after every pair, never truncated.
    pub suffix: String,
    /// The instruction used when a request gives none.
    pub default_instruction: String,
    /// The token (a single vocabulary entry) whose logit counts for the document.
    pub yes_token: String,
    /// The token whose logit counts against it.
    pub no_token: String,
}

impl Default for LlmReranker {
    fn default() -> Self {
        LlmReranker::qwen3()
    }
}

impl LlmReranker {
    /// Qwen3-Reranker's prompt, as its model card writes it.
    pub fn qwen3() -> Self {
        LlmReranker {
            prefix: "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. \
                     Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
                .into(),
            body: "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}".into(),
            suffix: "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n".into(),
            default_instruction: "Given a web search query, retrieve relevant passages that answer the query".into(),
            yes_token: "yes".into(),
            no_token: "no".into(),
        }
    }

    /// Replaces the prompt: `prefix`, `body` (with `{instruction}`, `{query}`, `{document}`) and `suffix`.
    pub fn with_prompt(mut self, prefix: impl Into<String>, body: impl Into<String>, suffix: impl Into<String>) -> Self {
        (self.prefix, self.body, self.suffix) = (prefix.into(), body.into(), suffix.into());
        self
    }

    /// Replaces the instruction used when a request gives none.
    pub fn with_default_instruction(mut self, instruction: impl Into<String>) -> Self {
        self.default_instruction = instruction.into();
        self
    }

    /// Replaces the answer tokens.
    pub fn with_answer_tokens(mut self, yes: impl Into<String>, no: impl Into<String>) -> Self {
        (self.yes_token, self.no_token) = (yes.into(), no.into());
        self
    }

    /// The body split at its placeholders, checked: `{query}` and `{document}` once each,
    /// `{instruction}` at most once.
    pub(crate) fn body_parts(&self) -> Result<Vec<Part>> {
        let invalid = |reason: String| Error::InvalidOption { name: "llm_reranker", reason };
        let mut parts = Vec::new();
        let mut rest = self.body.as_str();
        while let Some(at) = rest.find('{') {
            let found = [("{instruction}", Part::Instruction), ("{query}", Part::Query), ("{document}", Part::Document)]
                .into_iter()
                .find(|(name, _)| rest[at..].starts_with(name));
            match found {
                Some((name, part)) => {
                    if at > 0 {
                        parts.push(Part::Text(rest[..at].to_string()));
                    }
                    parts.push(part);
                    rest = &rest[at + name.len()..];
                }
                None => {
                    parts.push(Part::Text(rest[..=at].to_string()));
                    rest = &rest[at + 1..];
                }
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        for (part, name, least) in [(Part::Query, "{query}", 1), (Part::Document, "{document}", 1), (Part::Instruction, "{instruction}", 0)] {
            let n = parts.iter().filter(|p| **p == part).count();
            if n < least || n > 1 {
                return Err(invalid(format!("the body {:?} has {name} {n} times (once{} expected)", self.body, if least == 0 { " at most" } else { "" })));
            }
        }
        Ok(parts)
    }
}

/// A piece of the body: literal text or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Text(String),
    Instruction,
    Query,
    Document,
}

/// The body with the pair put in, in one pass: text inside the query or document that looks like
/// a placeholder stays as it is.
pub(crate) fn fill(parts: &[Part], instruction: &str, query: &str, document: &str) -> String {
    let mut out = String::new();
    for p in parts {
        out.push_str(match p {
            Part::Text(t) => t,
            Part::Instruction => instruction,
            Part::Query => query,
            Part::Document => document,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{fill, LlmReranker};

    #[test]
    fn the_qwen3_body_is_the_model_cards() {
        let parts = LlmReranker::qwen3().body_parts().unwrap();
        let text = fill(&parts, "Find it", "what {document}?", "a doc");
        assert_eq!(text, "<Instruct>: Find it\n<Query>: what {document}?\n<Document>: a doc");
    }

    #[test]
    fn a_body_without_query_or_document_is_refused() {
        let r = LlmReranker::qwen3().with_prompt("", "Q: {query} {query} D: {document}", "");
        let err = r.body_parts().unwrap_err().to_string();
        assert!(err.contains("{query} 2 times"), "{err}");
        let err = LlmReranker::qwen3().with_prompt("", "Q: {query}", "").body_parts().unwrap_err().to_string();
        assert!(err.contains("{document} 0 times"), "{err}");
        // Other braces are literal text.
        let parts = LlmReranker::qwen3().with_prompt("", "{x} {query} {document}", "").body_parts().unwrap();
        assert_eq!(fill(&parts, "", "q", "d"), "{x} q d");
    }
}
