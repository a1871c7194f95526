//! Sentence embeddings: the [`Embedder`] trait and the BERT-family models behind it.
//!
//! `multilingual-e5-small` (default) puts Russian and English in one space, so a Russian note
//! is found by an English query; `all-MiniLM-L6-v2` is an English-only alternative.

use crate::bert::Bert;
use crate::{ExtractError, Result};
use mnema_models::{e5q4::E5Q4File, ModelFiles};
use std::path::Path;
use tokenizers::Tokenizer;

/// Whether a text is a query or stored content; asymmetric models embed them differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A search query.
    Query,
    /// A stored passage.
    Passage,
}

/// A sentence-embedding model.
pub trait Embedder: Send + Sync {
    /// Catalog name of the model.
    fn name(&self) -> &str;
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// The most content tokens one passage may have (prefix and special tokens excluded).
    fn max_content_tokens(&self) -> usize;
    /// The model's tokenizer (chunking counts tokens with it).
    fn tokenizer(&self) -> &Tokenizer;
    /// Embeds texts; returns one L2-normalised vector per text, in input order. Texts longer
    /// than the context are truncated.
    fn embed(&self, texts: &[&str], role: Role) -> Result<Vec<Vec<f32>>>;
    /// Bytes of weights held in memory.
    fn weight_bytes(&self) -> usize;
}

/// Names of the embedding models mnema can load.
pub const EMBEDDERS: [&str; 2] = ["multilingual-e5-small", "all-minilm-l6-v2"];

/// Loads an embedding model by catalog name from `models_dir`.
pub fn load_embedder(models_dir: &Path, name: &str) -> Result<Box<dyn Embedder>> {
    match name {
        "multilingual-e5-small" => {
            let files = ModelFiles::require(models_dir, name, &["tokenizer.json"], &["e5-small-q4.bin", "model.safetensors"])?;
            let q4 = files.path("e5-small-q4.bin");
            let t0 = std::time::Instant::now();
            let bert = if q4.is_file() {
                Bert::from_e5q4(&E5Q4File::open(&q4)?)?
            } else {
                load_safetensors(&files.path("model.safetensors"), 12, 12)?
            };
            tracing::debug!("{name} weights loaded in {:?}", t0.elapsed());
            Ok(Box::new(BertEmbedder::new(name, bert, &files.path("tokenizer.json"), ("query: ", "passage: "))?))
        }
        "all-minilm-l6-v2" => {
            let files = ModelFiles::require(models_dir, name, &["tokenizer.json", "model.safetensors"], &[])?;
            let bert = load_safetensors(&files.path("model.safetensors"), 12, 6)?;
            Ok(Box::new(BertEmbedder::new(name, bert, &files.path("tokenizer.json"), ("", ""))?))
        }
        other => Err(mnema_models::ModelError::Unknown(format!("{other} (embedders: {})", EMBEDDERS.join(", "))).into()),
    }
}

fn load_safetensors(path: &Path, heads: usize, layers: usize) -> Result<Bert> {
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| mnema_models::ModelError::Format { path: path.into(), reason: e.to_string() })?;
    Bert::from_tensors(tensors, heads, layers, 1e-12)
}

/// A BERT encoder with its tokenizer and prompt prefixes.
pub struct BertEmbedder {
    name: String,
    bert: Bert,
    tokenizer: Tokenizer,
    prefixes: (&'static str, &'static str),
    /// Upper bound on the attention scores tensor of one forward pass, in bytes; batches of
    /// long texts are split to stay under it.
    pub max_attention_bytes: usize,
    /// Most texts per forward pass.
    pub max_batch: usize,
}

impl BertEmbedder {
    fn new(name: &str, bert: Bert, tokenizer_path: &Path, prefixes: (&'static str, &'static str)) -> Result<BertEmbedder> {
        let tk_err = |reason: String| ExtractError::Tokenizer { path: tokenizer_path.into(), reason };
        let t0 = std::time::Instant::now();
        let mut tokenizer = Tokenizer::from_file(tokenizer_path).map_err(|e| tk_err(e.to_string()))?;
        tracing::debug!("tokenizer {} loaded in {:?}", tokenizer_path.display(), t0.elapsed());
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| tk_err(e.to_string()))?;
        Ok(BertEmbedder { name: name.into(), bert, tokenizer, prefixes, max_attention_bytes: 48 << 20, max_batch: 32 })
    }

    fn encode(&self, texts: &[&str], role: Role) -> Result<Vec<Vec<u32>>> {
        let prefix = if role == Role::Query { self.prefixes.0 } else { self.prefixes.1 };
        let inputs: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        let enc = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| ExtractError::Tokenizer { path: "tokenizer.json".into(), reason: e.to_string() })?;
        let max = self.bert.shape().max_positions;
        Ok(enc
            .into_iter()
            .map(|e| {
                let mut ids = e.get_ids().to_vec();
                if ids.len() > max {
                    let last = *ids.last().unwrap_or(&0);
                    ids.truncate(max - 1);
                    ids.push(last);
                }
                ids
            })
            .collect())
    }
}

impl Embedder for BertEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.bert.shape().hidden
    }

    fn max_content_tokens(&self) -> usize {
        // Two special tokens and up to four prefix tokens ("passage: ").
        self.bert.shape().max_positions - 6
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn weight_bytes(&self) -> usize {
        self.bert.weight_bytes
    }

    fn embed(&self, texts: &[&str], role: Role) -> Result<Vec<Vec<f32>>> {
        let ids = self.encode(texts, role)?;
        // Similar lengths together: less padding, and long texts get smaller batches.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); ids.len()];
        let heads = self.bert.shape().heads;
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            while end < order.len() && end - start < self.max_batch {
                let t = ids[order[end]].len();
                let att = (end - start + 1) * heads * t * t * 4;
                if end > start && att > self.max_attention_bytes {
                    break;
                }
                end += 1;
            }
            let batch: Vec<Vec<u32>> = order[start..end].iter().map(|&i| ids[i].clone()).collect();
            for (k, v) in self.bert.embed(&batch)?.into_iter().enumerate() {
                out[order[start + k]] = v;
            }
            start = end;
        }
        Ok(out)
    }
}
