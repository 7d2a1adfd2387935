//! `config.json` of the distilbert family (see `models/distilbert.rs` for the model).

use super::Activation;
use super::{ArchConfig, Details, Family};
use super::fields::Fields;
use crate::Result;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_position_embeddings: usize,
    pub(crate) activation: Activation,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        let max_position_embeddings = f.usize("max_position_embeddings")?;
        Ok(ArchConfig {
            family: Family::DistilBert,
            model_type,
            vocab_size: f.usize("vocab_size")?,
            hidden_size: f.usize("dim")?,
            num_hidden_layers: f.usize("n_layers")?,
            num_attention_heads: f.usize("n_heads")?,
            intermediate_size: f.usize("hidden_dim")?,
            max_tokens: max_position_embeddings,
            details: Details::DistilBert(Config { max_position_embeddings, activation: f.activation("activation", "gelu")? }),
        })
    }
}
