//! Engines that turn files into text and text into vectors: note reading, token-aware
//! chunking, sentence embeddings (candle), OCR engines, audio decoding, voice-activity
//! detection and speech to text (Whisper over candle).
//!
//! **Architecture Invariant:** nothing here knows about SQLite, HTTP or the CLI; engines get
//! weights through `mnema-models` and return plain structs.
#![deny(missing_docs)]

pub mod audio;
pub mod bert;
pub mod dense;
pub mod embed;
pub mod image;
pub mod note;
pub mod ocr;
pub mod vad;
pub mod whisper;

pub use embed::load_embedder;
pub use mnema_engine::{chunk, Embedder, EngineError, Role, TokenCounter};

use std::path::PathBuf;

/// Errors from extraction engines.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Model files missing, corrupt or unreadable.
    #[error(transparent)]
    Model(#[from] mnema_models::ModelError),
    /// The tokenizer could not be loaded or failed on input.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A tensor operation failed (shape bug or out of memory).
    #[error("inference failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The input file cannot be used; the reason names what is wrong with it.
    #[error("{0}")]
    BadInput(String),
    /// Model weights that parse but do not have the expected content (a tensor missing, a
    /// shape wrong).
    #[error("model weights are unusable: {0}: run scripts/setup.sh to fetch them again")]
    ModelContent(String),
    /// An engine this machine lacks or cannot start (ONNX Runtime library, tesseract data).
    #[error("{0}")]
    Unavailable(String),
    /// An engine failed at run time for a reason the input does not explain (an ONNX Runtime
    /// session error, a panic in a worker).
    #[error("{0}")]
    Engine(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ExtractError {
    /// What sort of failure this is (the CLI maps it to an exit code, the server to a status).
    pub fn kind(&self) -> mnema_core::ErrorKind {
        use mnema_core::ErrorKind as K;
        match self {
            ExtractError::Model(e) => e.kind(),
            ExtractError::Tokenizer { .. } | ExtractError::ModelContent(_) => K::ModelFile,
            ExtractError::Candle(e) => candle_kind(e),
            ExtractError::BadInput(_) => K::Input,
            ExtractError::Unavailable(_) => K::Unavailable,
            ExtractError::Engine(_) => K::Internal,
            ExtractError::Io { source, .. } => K::of_io(source, K::Input),
        }
    }
}

/// A tensor error is a bug or a resource failure, never the user's input; a full disk shows
/// through when candle wraps an IO error.
fn candle_kind(e: &candle_core::Error) -> mnema_core::ErrorKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return mnema_core::ErrorKind::of_io(io, mnema_core::ErrorKind::Internal);
        }
        cur = c.source();
    }
    mnema_core::ErrorKind::Internal
}

impl From<ExtractError> for EngineError {
    fn from(e: ExtractError) -> EngineError {
        EngineError::with_source(e.kind(), e.to_string(), e)
    }
}

/// Result alias for this crate.
pub type Result<T, E = ExtractError> = std::result::Result<T, E>;
