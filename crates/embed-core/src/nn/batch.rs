//! One batch as the device sees it: the token stream, the padded layout's rows and masks, and
//! runs of similar length.

use tch::Tensor;

use crate::profile::stage;

/// One batch on the model's device. `b` sequences, the longest `len` tokens; `ids`, `type_ids`
/// and `positions` hold the token stream: the `tokens` real tokens back to back, then possibly
/// a filler sequence (packed attention only) that rounds the stream's length up. Positions
/// count from 0 in every sequence; a family with another scheme adds its offset.
pub(crate) struct BatchInput {
    pub(crate) ids: Tensor,
    pub(crate) type_ids: Tensor,
    pub(crate) positions: Tensor,
    /// Where each real token sits in the padded `[b * len]` layout.
    pub(crate) rows: Tensor,
    /// `[b, len]`, 1 = token.
    pub(crate) mask: Tensor,
    /// int32: 0, len0, len0 + len1, …, through the filler (the packed attention's bounds).
    pub(crate) cu_seqlens: Tensor,
    /// Real tokens (the stream's first rows).
    pub(crate) tokens: i64,
    /// Longest sequence of the stream, filler included.
    pub(crate) max_seqlen: i64,
    pub(crate) b: i64,
    pub(crate) len: i64,
    /// Runs of rows whose padded attention runs on their own length (see [`length_groups`]);
    /// empty: the whole batch at `len`.
    pub(crate) groups: Vec<LenGroup>,
    /// CPU attention runs the variable-length kernel (`attention::cpu_varlen`) where the
    /// scores allow it.
    pub(crate) varlen: bool,
    /// Some tokens are no one's keys (`mask` 0 on a real token: a ColBERT query's expansion):
    /// attention must run padded under the key mask, never packed.
    pub(crate) masked_keys: bool,
}

/// Consecutive rows `first..first + count` of a padded batch, the longest `len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LenGroup {
    pub(crate) first: i64,
    pub(crate) count: i64,
    pub(crate) len: i64,
}

/// A run ends where the next sequence is shorter than this share of the run's longest.
const GROUP_SPLIT_BELOW: f64 = 0.75;

/// Splits a batch's rows (their lengths in row order; the worker sorts them longest first)
/// into runs of similar length, so that padded attention, whose cost grows with the square of
/// the padded length, is not paid at the longest sequence's length by every short one. One
/// run for the whole batch gives an empty list. Any order is correct: each run is padded to
/// its own longest.
pub(crate) fn length_groups(lens: &[i64]) -> Vec<LenGroup> {
    let mut groups: Vec<LenGroup> = Vec::new();
    for (row, &n) in lens.iter().enumerate() {
        let n = n.max(1);
        match groups.last_mut() {
            Some(g) if (n as f64) >= GROUP_SPLIT_BELOW * g.len as f64 => {
                g.count += 1;
                g.len = g.len.max(n);
            }
            _ => groups.push(LenGroup { first: row as i64, count: 1, len: n }),
        }
    }
    if groups.len() == 1 {
        groups.clear();
    }
    groups
}

impl BatchInput {
    fn is_dense(&self) -> bool {
        self.tokens == self.b * self.len
    }

    /// `[tokens, width]` → `[b * len, width]` with zeros at the padding.
    pub(crate) fn pad(&self, t: &Tensor) -> Tensor {
        if self.is_dense() {
            t.shallow_clone()
        } else {
            let width = t.size()[1];
            stage("index_ops", || Tensor::zeros([self.b * self.len, width], (t.kind(), t.device())).index_copy(0, &self.rows, t))
        }
    }

    /// `[b * len, width]` → `[tokens, width]`.
    pub(crate) fn unpad(&self, t: Tensor) -> Tensor {
        if self.is_dense() {
            t
        } else {
            stage("index_ops", || t.index_select(0, &self.rows))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{length_groups, LenGroup};

    fn g(first: i64, count: i64, len: i64) -> LenGroup {
        LenGroup { first, count, len }
    }

    #[test]
    fn one_run_of_similar_lengths_is_no_groups() {
        assert!(length_groups(&[]).is_empty());
        assert!(length_groups(&[7]).is_empty());
        assert!(length_groups(&[40, 36, 31, 30]).is_empty());
    }

    #[test]
    fn a_run_ends_below_three_quarters_of_its_longest() {
        // 30 stays with 40 (0.75 exactly), 29 starts a run, 20 < 0.75 * 29 another, 12 < 15
        // another; an empty sequence counts as one token.
        assert_eq!(length_groups(&[40, 30, 29, 22, 20, 12, 10, 0]), vec![g(0, 2, 40), g(2, 2, 29), g(4, 1, 20), g(5, 2, 12), g(7, 1, 1)]);
    }

    #[test]
    fn any_order_covers_every_row_within_its_runs_length() {
        let lens = [3i64, 50, 4, 4, 60, 2, 9];
        let groups = length_groups(&lens);
        let mut next = 0;
        for grp in &groups {
            assert_eq!(grp.first, next, "runs are consecutive");
            for row in grp.first..grp.first + grp.count {
                assert!(lens[row as usize].max(1) <= grp.len, "row {row} is longer than its run");
            }
            next += grp.count;
        }
        assert_eq!(next, lens.len() as i64);
    }
}
