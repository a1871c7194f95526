//! Engines that turn files into text and text into vectors: note reading, token-aware
//! chunking, sentence embeddings (candle), OCR engines, audio decoding, voice-activity
//! detection and speech to text (Whisper over candle).
//!
//! **Architecture Invariant:** nothing here knows about SQLite, HTTP or the CLI; engines get
//! weights through `mnema-models` and return plain structs.
#![deny(missing_docs)]

pub mod audio;
pub mod bert;
pub mod chunk;
pub mod dense;
pub mod embed;
pub mod image;
pub mod note;
pub mod ocr;
pub mod vad;
pub mod whisper;

pub use embed::{load_embedder, Embedder, Role};

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
}

/// Result alias for this crate.
pub type Result<T, E = ExtractError> = std::result::Result<T, E>;
