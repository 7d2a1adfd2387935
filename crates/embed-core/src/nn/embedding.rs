//! Token embeddings, and embedding tables stored in int8.

use tch::Tensor;

use super::{quantize_rows, BatchInput, LayerNorm};
use crate::profile::stage;

/// Token embeddings: word rows, plus learned positions (counted from an offset) and token
/// types where the family has them, then a LayerNorm.
pub(crate) struct Embeddings {
    pub(crate) word: Tensor,
    /// The position table and the family's offset (RoBERTa-style ids start past padding).
    pub(crate) position: Option<(Tensor, i64)>,
    /// Absent where `type_vocab_size` is 0.
    pub(crate) token_type: Option<Tensor>,
    pub(crate) norm: LayerNorm,
    /// The word table in int8, one symmetric scale per row ([`Embeddings::quantize_words`]):
    /// `(rows [vocab, hidden] int8, scales [vocab, 1] in the table's kind)`; `word` is then an
    /// empty placeholder.
    pub(crate) word_int8: Int8Table,
}

impl Embeddings {
    /// `[stream, hidden]`, normed, for the batch's whole token stream.
    pub(crate) fn forward(&self, t: &BatchInput) -> Tensor {
        stage("embeddings", || self.forward_inner(t))
    }

    fn forward_inner(&self, t: &BatchInput) -> Tensor {
        let mut x = lookup(&self.word, &self.word_int8, &t.ids);
        if let Some((table, offset)) = &self.position {
            x += embed(table, &(&t.positions + *offset));
        }
        if let Some(table) = &self.token_type {
            x += embed(table, &t.type_ids);
        }
        self.norm.forward(&x)
    }
}

impl Embeddings {
    /// Stores the word table in int8 with one scale per row (see [`quantize_table`]).
    /// Positions and token types (small) stay as they are.
    pub(crate) fn quantize_words(&self) -> (u64, u64) {
        quantize_table(&self.word, &self.word_int8)
    }
}


/// An embedding table's int8 form, once made: `(rows [vocab, hidden] int8, scales [vocab, 1]
/// in the table's kind)`.
pub(crate) type Int8Table = std::cell::OnceCell<(Tensor, Tensor)>;

/// Stores `table` in int8 with one symmetric scale per row in `cell` and frees the float
/// table (its handles see an empty placeholder); returns the bytes freed and the bytes the int8
/// table holds. Not for a table something else shares (a tied decoder).
pub(crate) fn quantize_table(table: &Tensor, cell: &Int8Table) -> (u64, u64) {
    let kind = table.kind();
    let (rows, scales) = quantize_rows(table);
    // Scales in the table's kind: lookups come back in the model's kind.
    let scales = scales.to_kind(kind);
    let freed = (table.numel() * kind.elt_size_in_bytes()) as u64;
    let held = (rows.numel() + scales.numel() * kind.elt_size_in_bytes()) as u64;
    let _ = cell.set((rows, scales));
    table.shallow_clone().set_data(&Tensor::empty([0], (kind, table.device())));
    (freed, held)
}

/// Rows `ids` of `table`, or of its int8 form where [`quantize_table`] made one.
pub(crate) fn lookup(table: &Tensor, int8: &Int8Table, ids: &Tensor) -> Tensor {
    match int8.get() {
        Some((rows, scales)) => embed(rows, ids).to_kind(scales.kind()) * embed(scales, ids),
        None => embed(table, ids),
    }
}

/// Looks up rows of an embedding table.
pub(crate) fn embed(table: &Tensor, ids: &Tensor) -> Tensor {
    Tensor::embedding(table, ids, -1, false, false)
}
