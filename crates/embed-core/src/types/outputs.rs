//! What the service computes: dense vectors, tokenizations, scores, sparse and multi-vector
//! embeddings, token states, and MaxSim over multi-vectors.

/// The result of [`EmbeddingService::embed_texts`](crate::EmbeddingService::embed_texts).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embeddings {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens per input after truncation, special tokens and prompt included.
    pub token_counts: Vec<usize>,
    /// Whether each input was truncated.
    pub truncated: Vec<bool>,
}

impl Embeddings {
    /// Sum of `token_counts`.
    pub fn total_tokens(&self) -> usize {
        self.token_counts.iter().sum()
    }
}

/// One input after tokenization.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenizedText {
    /// Token ids fed to the model.
    pub ids: Vec<u32>,
    /// Token strings.
    pub tokens: Vec<String>,
    /// Whether the input was truncated to the limit.
    pub truncated: bool,
}


/// One input of [`RetrievalTasks::classify`](crate::RetrievalTasks::classify): a text, or a
/// pair encoded with the tokenizer's pair template (a query and a passage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassifyInput {
    /// One text.
    Text(String),
    /// Two texts; the second is truncated first when the pair is too long.
    Pair(String, String),
}

/// Per-token logits turned into scores the way sentence-transformers' CrossEncoder and TEI do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Classified {
    /// Raw logits per input, one per label, in input order.
    pub logits: Vec<Vec<f32>>,
    /// Tokens per input after truncation, special tokens included.
    pub token_counts: Vec<usize>,
    /// Whether each input was truncated.
    pub truncated: Vec<bool>,
    /// The `logits` are similarities already (a multi-vector model's MaxSim), which
    /// [`Classified::scores`] returns unchanged.
    pub similarities: bool,
}

impl Classified {
    /// Scores per input: the sigmoid of the logit for one-label models (rerankers), the
    /// softmax over the labels otherwise; MaxSim similarities as they are.
    pub fn scores(&self) -> Vec<Vec<f32>> {
        if self.similarities {
            return self.logits.clone();
        }
        self.logits.iter().map(|l| activate(l)).collect()
    }

    /// Sum of `token_counts`.
    pub fn total_tokens(&self) -> usize {
        self.token_counts.iter().sum()
    }
}

fn activate(logits: &[f32]) -> Vec<f32> {
    if logits.len() == 1 {
        return vec![(1.0 / (1.0 + (-f64::from(logits[0])).exp())) as f32];
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits.iter().map(|&x| f64::from(x - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / sum) as f32).collect()
}

/// A sparse vector: the non-zero entries of a vocabulary-sized vector, by increasing index.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct SparseVector {
    /// Vocabulary ids with a non-zero weight, increasing.
    pub indices: Vec<u32>,
    /// Their weights.
    pub values: Vec<f32>,
}

/// The result of [`RetrievalTasks::embed_sparse`](crate::RetrievalTasks::embed_sparse).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseEmbeddings {
    /// One sparse vector per input, in input order.
    pub vectors: Vec<SparseVector>,
    /// Tokens per input after truncation.
    pub token_counts: Vec<usize>,
    /// Whether each input was truncated.
    pub truncated: Vec<bool>,
}

/// The result of [`RetrievalTasks::embed_multi`](crate::RetrievalTasks::embed_multi): per
/// input, its token vectors, each L2-normalised (BGE-M3's ColBERT vectors: every token after
/// `[CLS]`; a PyLate model's: a query's every token, expansion included, a document's without
/// its skiplist's punctuation).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MultiVectorEmbeddings {
    /// Per input, one vector per kept token.
    pub vectors: Vec<Vec<Vec<f32>>>,
    /// Tokens per input after truncation (the model's input, special tokens and markers included).
    pub token_counts: Vec<usize>,
    /// Whether each input was truncated.
    pub truncated: Vec<bool>,
}

impl MultiVectorEmbeddings {
    /// Sum of `token_counts`.
    pub fn total_tokens(&self) -> usize {
        self.token_counts.iter().sum()
    }
}

/// Late interaction's score: for each query vector the best dot product with a document
/// vector, summed. A NaN product is never the best; a query vector against an empty document
/// adds 0. `None` when the vectors' widths differ.
pub fn max_sim(query: &[Vec<f32>], document: &[Vec<f32>]) -> Option<f32> {
    let width = query.first().or(document.first()).map_or(0, Vec::len);
    if query.iter().chain(document).any(|v| v.len() != width) {
        return None;
    }
    let mut total = 0.0f32;
    for q in query {
        let mut best: Option<f32> = None;
        for d in document {
            let x: f32 = q.iter().zip(d).map(|(a, b)| a * b).sum();
            if !x.is_nan() && best.is_none_or(|b| x > b) {
                best = Some(x);
            }
        }
        total += best.unwrap_or(0.0);
    }
    Some(total)
}

/// The result of [`RetrievalTasks::embed_tokens`](crate::RetrievalTasks::embed_tokens): the
/// last hidden state of every token (ColBERT-style use, late chunking).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenEmbeddings {
    /// Per input, one vector per token (special tokens and prompt included).
    pub vectors: Vec<Vec<Vec<f32>>>,
    /// Whether each input was truncated.
    pub truncated: Vec<bool>,
}

#[cfg(test)]
mod tests {
    use super::max_sim;

    #[test]
    fn max_sim_sums_each_query_vectors_best_match() {
        let q = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let d = vec![vec![0.5, 0.5], vec![0.9, 0.1], vec![0.2, 0.7]];
        // Best for [1, 0]: 0.9; for [0, 1]: 0.7.
        assert!((max_sim(&q, &d).unwrap() - 1.6).abs() < 1e-6);
        // A NaN product is never the best; an empty document adds 0 per query vector.
        let with_nan = vec![vec![f32::NAN, 0.0], vec![0.9, 0.1]];
        assert!((max_sim(&q[..1], &with_nan).unwrap() - 0.9).abs() < 1e-6);
        assert_eq!(max_sim(&q, &[]), Some(0.0));
        // Widths must agree.
        assert_eq!(max_sim(&q, &[vec![1.0, 0.0, 0.0]]), None);
    }
}
