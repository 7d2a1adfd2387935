//! Outputs built from the worker's rows: classifier logits, multi-vectors (dropping a PyLate
//! document's skiplist), BGE-M3's lexical weights, and reranking by MaxSim.

use std::sync::Arc;

use super::running::{off_executor, prepare_off_executor, submit, Running};
use crate::runtime::{Output, RowFinish};
use crate::types::{Classified, ClassifyInput, EmbedOptions, MultiVectorEmbeddings, SparseEmbeddings, SparseVector};
use crate::{Error, InputMode, Priority, Result};

/// Tokenizes classifier inputs (on the blocking pool when many) and runs them.
/// `default_priority` applies where `options` names none.
pub(super) async fn run_classifier(running: &Arc<Running>, inputs: &[ClassifyInput], options: &EmbedOptions, default_priority: Priority) -> Result<Classified> {
    if inputs.is_empty() {
        return Ok(Classified::default());
    }
    let (truncate, instruction) = (options.truncate, options.instruction.clone());
    let priority = options.priority.unwrap_or(default_priority);
    let prepared = off_executor(running, inputs, priority, move |text, inputs| text.prepare_inputs(inputs, truncate, instruction.as_deref())).await?;
    let token_counts = prepared.iter().map(|p| p.seq.ids.len()).collect();
    let truncated = prepared.iter().map(|p| p.truncated).collect();
    let logits = submit(running, prepared.into_iter().map(|p| p.seq).collect(), Output::Head, RowFinish::default(), priority).await?;
    Ok(Classified { logits, token_counts, truncated, similarities: false })
}

/// The multi-vector head's token vectors of `texts`: one job, then each input's rows cut into
/// vectors (a document's skiplist tokens dropped for a PyLate model).
pub(super) async fn multi_vectors(running: &Arc<Running>, texts: &[String], options: &EmbedOptions, priority: Priority) -> Result<MultiVectorEmbeddings> {
    if texts.is_empty() {
        return Ok(MultiVectorEmbeddings::default());
    }
    let prepared = prepare_off_executor(running, texts, options).await?;
    let token_counts: Vec<usize> = prepared.iter().map(|p| p.seq.ids.len()).collect();
    let truncated = prepared.iter().map(|p| p.truncated).collect();
    let ids: Vec<Vec<i64>> = prepared.iter().map(|p| p.seq.ids.clone()).collect();
    let rows = submit(running, prepared.into_iter().map(|p| p.seq).collect(), Output::Multi, RowFinish::default(), priority).await?;
    if rows.len() != ids.len() {
        return Err(Error::Inference { model: running.info.name.clone(), message: format!("{} multi-vector rows for {} inputs", rows.len(), ids.len()) });
    }
    let query = options.mode != Some(InputMode::Document);
    let mut vectors = Vec::with_capacity(rows.len());
    for (flat, ids) in rows.into_iter().zip(&ids) {
        // BGE-M3 leaves out [CLS]: the rows are the last `count` tokens.
        let count = flat.len().checked_div(running.info.dimension).unwrap_or(0);
        let kept = &ids[ids.len().saturating_sub(count)..];
        if count == 0 || kept.len() != count || flat.len() != count * running.info.dimension {
            vectors.push(Vec::new());
            continue;
        }
        vectors.push(
            flat.chunks(running.info.dimension)
                .zip(kept)
                .filter(|(_, &id)| running.text.keeps_vector(id as u32, query))
                .map(|(v, _)| v.to_vec())
                .collect(),
        );
    }
    Ok(MultiVectorEmbeddings { vectors, token_counts, truncated })
}

/// BGE-M3's lexical weights, as FlagEmbedding's `_process_token_weights`: each token's
/// `relu(sparse_linear(h))`, the largest per token id, weights above 0 only, the tokenizer's
/// cls / eos / pad / unk tokens left out; by increasing id.
pub(super) async fn lexical_weights(running: &Arc<Running>, texts: &[String], options: &EmbedOptions) -> Result<SparseEmbeddings> {
    let prepared = prepare_off_executor(running, texts, options).await?;
    let token_counts = prepared.iter().map(|p| p.seq.ids.len()).collect();
    let truncated = prepared.iter().map(|p| p.truncated).collect();
    let ids: Vec<Vec<i64>> = prepared.iter().map(|p| p.seq.ids.clone()).collect();
    let priority = options.priority_for(texts.len());
    let rows = submit(running, prepared.into_iter().map(|p| p.seq).collect(), Output::Lexical, RowFinish::default(), priority).await?;
    let unused = &running.text.lexical_unused;
    let mut vectors = Vec::with_capacity(rows.len());
    for (weights, ids) in rows.iter().zip(&ids) {
        if weights.len() != ids.len() {
            return Err(Error::Inference { model: running.info.name.clone(), message: format!("{} lexical weights for {} tokens", weights.len(), ids.len()) });
        }
        let mut best = std::collections::BTreeMap::<u32, f32>::new();
        for (&w, &id) in weights.iter().zip(ids) {
            let id = id as u32;
            if w > 0.0 && !unused.contains(&id) {
                let e = best.entry(id).or_insert(w);
                if w > *e {
                    *e = w;
                }
            }
        }
        let (indices, values) = best.into_iter().unzip();
        vectors.push(SparseVector { indices, values });
    }
    Ok(SparseEmbeddings { vectors, token_counts, truncated })
}

/// Reranks by late interaction: the query's vectors (query side) against each text's
/// (document side), MaxSim. BGE-M3's score is divided by the query's vector count, as
/// FlagEmbedding's `colbert_score`; a PyLate model's is the plain sum, as PyLate's
/// `colbert_scores`. An instruction is refused (these models have no instruction prompt).
pub(super) async fn rerank_max_sim(running: &Arc<Running>, query: &str, texts: &[String], options: &EmbedOptions) -> Result<Classified> {
    if options.instruction.is_some() {
        return Err(Error::InvalidOption { name: "instruction", reason: format!("model {} is a multi-vector model without an instruction prompt", running.info.name) });
    }
    if texts.is_empty() {
        return Ok(Classified { similarities: true, ..Classified::default() });
    }
    let priority = options.priority.unwrap_or(Priority::Interactive);
    let q_options = EmbedOptions { mode: Some(InputMode::Query), ..options.clone() };
    let d_options = EmbedOptions { mode: Some(InputMode::Document), ..options.clone() };
    let q = multi_vectors(running, &[query.to_string()], &q_options, priority).await?;
    let d = multi_vectors(running, texts, &d_options, priority).await?;
    let q_vectors = q.vectors.first().ok_or_else(|| Error::Inference { model: running.info.name.clone(), message: "no query vectors".into() })?;
    let per_query = if running.text.is_colbert() { 1.0 } else { q_vectors.len().max(1) as f32 };
    let logits = d
        .vectors
        .iter()
        .map(|doc| {
            crate::types::max_sim(q_vectors, doc)
                .map(|s| vec![s / per_query])
                .ok_or_else(|| Error::Inference { model: running.info.name.clone(), message: "query and document vectors differ in width".into() })
        })
        .collect::<Result<Vec<_>>>()?;
    // The query is encoded once: its tokens are counted with the first document's.
    let mut token_counts = d.token_counts.clone();
    if let (Some(first), Some(q_tokens)) = (token_counts.first_mut(), q.token_counts.first()) {
        *first += q_tokens;
    }
    let truncated = d.truncated.iter().map(|&t| t || q.truncated.first().copied().unwrap_or(false)).collect();
    Ok(Classified { logits, token_counts, truncated, similarities: true })
}

