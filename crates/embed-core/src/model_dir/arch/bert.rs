//! `config.json` of the bert family (see `models/bert.rs` for the model).

use super::Activation;
use super::{ArchConfig, Details, Family};
use super::fields::Fields;
use crate::Result;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_position_embeddings: usize,
    pub(crate) type_vocab_size: usize,
    pub(crate) layer_norm_eps: f64,
    pub(crate) activation: Activation,
    /// Added to the 0-based position of every token.
    pub(crate) position_offset: i64,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        let kind = f.str_or("position_embedding_type", "absolute")?;
        if kind != "absolute" {
            return Err(f.error(format!("position_embedding_type {kind:?} is not supported (only \"absolute\")")));
        }
        let roberta_positions = model_type != "bert";
        let position_offset = if roberta_positions { f.usize_or("pad_token_id", 1)? as i64 + 1 } else { 0 };
        let max_position_embeddings = f.usize("max_position_embeddings")?;
        let max_tokens = f.positions_after(max_position_embeddings, position_offset)?;
        let c = Config {
            max_position_embeddings,
            type_vocab_size: f.usize_or("type_vocab_size", 2)?,
            layer_norm_eps: f.f64_or("layer_norm_eps", 1e-12)?,
            activation: f.activation("hidden_act", "gelu")?,
            position_offset,
        };
        f.standard(Family::Bert, model_type, max_tokens, Details::Bert(c))
    }
}
