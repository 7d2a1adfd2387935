//! `config.json` of the mpnet family (see `models/mpnet.rs` for the model).

use super::Activation;
use super::{ArchConfig, Details, Family};
use super::fields::Fields;
use crate::Result;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_position_embeddings: usize,
    pub(crate) layer_norm_eps: f64,
    pub(crate) activation: Activation,
    pub(crate) buckets: i64,
    pub(crate) position_offset: i64,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        let max_position_embeddings = f.usize("max_position_embeddings")?;
        // transformers' MPNet counts positions from its padding index, fixed at 1 whatever
        // `pad_token_id` says.
        let position_offset = 2;
        let buckets = f.usize_or("relative_attention_num_buckets", 32)? as i64;
        if buckets < 4 {
            return Err(f.error(format!("relative_attention_num_buckets {buckets} is too small (at least 4)")));
        }
        let max_tokens = f.positions_after(max_position_embeddings, position_offset)?;
        let c = Config {
            max_position_embeddings,
            layer_norm_eps: f.f64_or("layer_norm_eps", 1e-12)?,
            activation: f.activation("hidden_act", "gelu")?,
            buckets,
            position_offset,
        };
        f.standard(Family::MPNet, model_type, max_tokens, Details::MPNet(c))
    }
}
