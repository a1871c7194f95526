//! Sentence embeddings: the [`Embedder`] trait and the BERT-family models behind it.
//!
//! `multilingual-e5-small` (default) puts Russian and English in one space, so a Russian note
//! is found by an English query; `all-MiniLM-L6-v2` is an English-only alternative.

use crate::bert::Bert;
use crate::{ExtractError, Result};
use mnema_engine::{Embedder, Role, TokenCounter};
use mnema_models::{e5q4::E5Q4File, ModelFiles};
use std::path::Path;
use tokenizers::Tokenizer;

/// Expected resident cost of loading an embedder, from its files: weights as they will be
/// held plus the tokenizer's structures (measured: e5's 17 MB tokenizer.json takes ~200 MB).
pub fn estimate_cost(rt: &crate::Runtime, name: &str) -> u64 {
    let models_dir = rt.models_dir.as_path();
    let size = |f: &str| std::fs::metadata(models_dir.join(name).join(f)).map_or(0, |m| m.len());
    match name {
        // Layers expand from 4 bits to bfloat16 (~43 MB) or f32 (~85 MB); the word table
        // stays mapped 4-bit.
        "multilingual-e5-small" if size("e5-small-q4.bin") > 0 => {
            let layers = if rt.dense == crate::dense::Precision::Bf16 { 43_000_000 } else { 85_000_000 };
            layers + 54_000_000 + size("tokenizer.json") * 12
        }
        _ => size("model.safetensors") + size("tokenizer.json") * 12,
    }
}

/// Names of the embedding models mnema can load (the list lives in `mnema-core`, which checks
/// `MNEMA_EMBEDDER` at start).
pub use mnema_core::config::EMBEDDERS;

/// Loads an embedding model by catalog name from the runtime's model directory. The
/// tokenizer (a 17 MB JSON for e5) is parsed on a second thread while the weights load.
pub fn load_embedder(rt: &crate::Runtime, name: &str) -> Result<Box<dyn Embedder>> {
    let models_dir = rt.models_dir.as_path();
    let (files, prefixes) = match name {
        "multilingual-e5-small" => (
            ModelFiles::require(models_dir, name, &["tokenizer.json"], &["e5-small-q4.bin", "model.safetensors"])?,
            ("query: ", "passage: "),
        ),
        "all-minilm-l6-v2" => (ModelFiles::require(models_dir, name, &["tokenizer.json", "model.safetensors"], &[])?, ("", "")),
        other => return Err(mnema_models::ModelError::Unknown(format!("{other} (embedders: {})", EMBEDDERS.join(", "))).into()),
    };
    let tokenizer_path = files.path("tokenizer.json");
    let tokenizer = std::thread::spawn({
        let path = tokenizer_path.clone();
        move || HfTokenizer::from_file(&path)
    });
    let t0 = std::time::Instant::now();
    let q4 = files.path("e5-small-q4.bin");
    let bert = if name == "multilingual-e5-small" && q4.is_file() {
        Bert::from_e5q4(&E5Q4File::open(&q4)?, rt.dense)
    } else {
        let layers = if name == "all-minilm-l6-v2" { 6 } else { 12 };
        load_safetensors(&files.path("model.safetensors"), 12, layers, rt.dense)
    };
    tracing::debug!("{name} weights loaded in {:?}, rss {} MB", t0.elapsed(), mnema_models::manager::process_rss() / 1_000_000);
    let tokenizer = tokenizer.join().map_err(|_| ExtractError::Tokenizer { path: tokenizer_path, reason: "loader panicked".into() })??;
    // Parsing the tokenizer JSON leaves ~100 MB of freed buffers behind.
    mnema_models::release_free_memory();
    Ok(Box::new(BertEmbedder {
        name: name.into(),
        bert: bert?,
        tokenizer,
        prefixes,
        max_batch_tokens: MAX_BATCH_TOKENS.into(),
        max_batch: 32,
    }))
}

/// A Hugging Face tokenizer (`tokenizer.json`) as a [`TokenCounter`].
pub struct HfTokenizer {
    inner: Tokenizer,
    path: std::path::PathBuf,
}

impl HfTokenizer {
    /// Loads `tokenizer.json` without padding or truncation (chunking sees every token).
    pub fn from_file(path: &Path) -> Result<HfTokenizer> {
        Ok(HfTokenizer { inner: load_tokenizer(path)?, path: path.to_path_buf() })
    }
}

impl TokenCounter for HfTokenizer {
    fn token_offsets(&self, text: &str) -> mnema_engine::Result<Vec<(usize, usize)>> {
        let enc = self.inner.encode(text, false).map_err(|e| ExtractError::Tokenizer { path: self.path.clone(), reason: e.to_string() })?;
        // Tokens that cover no text (special tokens) are left out, as the trait says.
        Ok(enc.get_offsets().iter().copied().filter(|&(a, b)| b > a).collect())
    }
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let t0 = std::time::Instant::now();
    let tk_err = |reason: String| ExtractError::Tokenizer { path: path.into(), reason };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| tk_err(e.to_string()))?;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).map_err(|e| tk_err(e.to_string()))?;
    tracing::debug!(
        "tokenizer {} loaded in {:?}, rss {} MB",
        path.display(),
        t0.elapsed(),
        mnema_models::manager::process_rss() / 1_000_000
    );
    Ok(tokenizer)
}

fn load_safetensors(path: &Path, heads: usize, layers: usize, precision: crate::dense::Precision) -> Result<Bert> {
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| mnema_models::ModelError::Format { path: path.into(), reason: e.to_string() })?;
    Bert::from_tensors(tensors, heads, layers, 1e-12, precision)
}

/// Tokens per forward pass when memory allows: measured fastest here (long texts 30% faster
/// than with 4096).
pub const MAX_BATCH_TOKENS: usize = 1024;

/// A BERT encoder with its tokenizer and prompt prefixes.
pub struct BertEmbedder {
    name: String,
    bert: Bert,
    tokenizer: HfTokenizer,
    prefixes: (&'static str, &'static str),
    /// Most tokens in one forward pass (sequences are not padded): bounds activation memory,
    /// about 24 KB per token for a 384-wide model (the FFN's 1536-wide intermediate
    /// dominates). Past ~1024 tokens a pass's buffers outgrow the caches and it gets slower.
    max_batch_tokens: std::sync::atomic::AtomicUsize,
    /// Most texts per forward pass.
    pub max_batch: usize,
}

impl BertEmbedder {
    fn encode(&self, texts: &[&str], role: Role) -> Result<Vec<Vec<u32>>> {
        let prefix = if role == Role::Query { self.prefixes.0 } else { self.prefixes.1 };
        let inputs: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        let enc = self
            .tokenizer
            .inner
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

    fn tokens(&self) -> &dyn TokenCounter {
        &self.tokenizer
    }

    fn weight_bytes(&self) -> usize {
        self.bert.weight_bytes
    }

    fn set_max_batch_tokens(&self, tokens: usize) {
        self.max_batch_tokens.store(tokens.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn embed(&self, texts: &[&str], role: Role) -> mnema_engine::Result<Vec<Vec<f32>>> {
        Ok(self.embed_texts(texts, role)?)
    }
}

impl BertEmbedder {
    fn embed_texts(&self, texts: &[&str], role: Role) -> Result<Vec<Vec<f32>>> {
        let ids = self.encode(texts, role)?;
        // Similar lengths together: less padding, and long texts get smaller batches.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); ids.len()];
        let mut start = 0;
        while start < order.len() {
            let (mut end, mut tokens) = (start, 0);
            let max_tokens = self.max_batch_tokens.load(std::sync::atomic::Ordering::Relaxed);
            while end < order.len() && end - start < self.max_batch {
                let t = ids[order[end]].len();
                if end > start && tokens + t > max_tokens {
                    break;
                }
                tokens += t;
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
