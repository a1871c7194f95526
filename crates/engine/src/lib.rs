//! The engine interface: what search, ingest and the front ends need of the models, without
//! the models. Traits for each role ([`Embedder`] with its [`TokenCounter`]; more roles land
//! beside it), the plain types they take and return, and one error type, [`EngineError`],
//! whose [`kind`](EngineError::kind) front ends map to exit codes and HTTP statuses.
//!
//! **Architecture Invariant:** this crate depends on `mnema-core` and nothing heavy (no
//! candle, tokenizers, ONNX Runtime, symphonia or Tesseract): a crate that only *uses*
//! engines builds without compiling any of them (`tests/tidy.rs` checks the crate graph).
#![deny(missing_docs)]

pub mod chunk;

use mnema_core::ErrorKind;
use std::fmt;

/// A failure of an engine, with its sort.
#[derive(Debug)]
pub struct EngineError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl EngineError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> EngineError {
        EngineError { kind, message: message.into(), source: None }
    }

    /// An error of `kind` saying `message`, caused by `source` (kept for error chains: a full
    /// disk deep inside stays visible).
    pub fn with_source(kind: ErrorKind, message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> EngineError {
        EngineError { kind, message: message.into(), source: Some(Box::new(source)) }
    }

    /// The input cannot be used (the message says why).
    pub fn input(message: impl Into<String>) -> EngineError {
        EngineError::new(ErrorKind::Input, message)
    }

    /// What sort of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message alone (without the source's).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Result alias for engine calls.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Whether a text is a query or stored content; asymmetric models embed them differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A search query.
    Query,
    /// A stored passage.
    Passage,
}

/// Splits text into a model's tokens, as the chunker needs them: the byte range of each token
/// in the text, in order. Tokens that cover no text (special tokens) are left out.
pub trait TokenCounter: Send + Sync {
    /// The byte ranges of `text`'s tokens.
    fn token_offsets(&self, text: &str) -> Result<Vec<(usize, usize)>>;

    /// How many tokens `text` has.
    fn count_tokens(&self, text: &str) -> Result<usize> {
        self.token_offsets(text).map(|o| o.len())
    }
}

/// A sentence-embedding model.
pub trait Embedder: Send + Sync {
    /// Catalog name of the model.
    fn name(&self) -> &str;
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// The most content tokens one passage may have (prefix and special tokens excluded).
    fn max_content_tokens(&self) -> usize;
    /// The model's tokenizer, as the chunker counts tokens.
    fn tokens(&self) -> &dyn TokenCounter;
    /// Embeds texts; returns one L2-normalised vector per text, in input order. Texts longer
    /// than the context are truncated.
    fn embed(&self, texts: &[&str], role: Role) -> Result<Vec<Vec<f32>>>;
    /// Bytes of weights held in memory.
    fn weight_bytes(&self) -> usize;
    /// Caps the tokens of one forward pass (activation memory grows with it).
    fn set_max_batch_tokens(&self, tokens: usize);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_stays_in_the_chain() {
        let io = std::io::Error::from_raw_os_error(28);
        let e = EngineError::with_source(ErrorKind::DiskFull, "cannot write the cache", io);
        assert_eq!(e.kind(), ErrorKind::DiskFull);
        assert_eq!(e.to_string(), "cannot write the cache");
        let src = std::error::Error::source(&e).expect("a source");
        assert!(src.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(28)));
    }
}
