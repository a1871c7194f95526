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

use std::path::{Path, PathBuf};

/// How the engines run on this machine: where their files are and which arithmetic they
/// use. The binary resolves it once from its [`Config`](mnema_core::Config) and hands it to
/// every loader; nothing here reads the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// Where model files are looked for.
    pub models_dir: PathBuf,
    /// Arithmetic of the large products (bfloat16 only where the CPU has AVX-512 BF16).
    pub dense: dense::Precision,
    /// Arithmetic of the speech model's weights.
    pub speech: whisper::SpeechDtype,
    /// The ONNX Runtime library, when not the `onnxruntime` model files.
    pub onnxruntime: Option<PathBuf>,
}

impl Runtime {
    /// The fastest arithmetic this CPU has, models from `models_dir`.
    pub fn new(models_dir: &Path) -> Runtime {
        Runtime::with_settings(models_dir, "auto", "auto", None)
    }

    /// From the resolved settings (`MNEMA_DENSE`, `MNEMA_SPEECH_DTYPE`, `ORT_DYLIB_PATH`).
    pub fn from_config(c: &mnema_core::Config) -> Runtime {
        Runtime::with_settings(&c.models_dir, &c.dense, &c.speech_dtype, c.onnxruntime.as_deref())
    }

    /// From setting values as [`Config`](mnema_core::Config) holds them (checked there):
    /// `dense` one of `auto|bf16|f32`, `speech` one of `auto|bf16|q8|f32`. bfloat16 is
    /// chosen only where the CPU has it, whatever was asked.
    pub fn with_settings(models_dir: &Path, dense: &str, speech: &str, onnxruntime: Option<&Path>) -> Runtime {
        let dense = dense::Precision::choose(dense);
        Runtime {
            models_dir: models_dir.to_path_buf(),
            dense,
            speech: whisper::SpeechDtype::choose(speech, dense),
            onnxruntime: onnxruntime.map(Path::to_path_buf),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use dense::{bf16_supported, Precision};
    use whisper::SpeechDtype;

    /// The settings choose the arithmetic, and bfloat16 only ever where the CPU has it.
    #[test]
    fn runtime_follows_the_settings() {
        let dir = Path::new("/nowhere");
        let f32 = Runtime::with_settings(dir, "f32", "auto", None);
        assert_eq!((f32.dense, f32.speech), (Precision::F32, SpeechDtype::Q8));
        let exact = Runtime::with_settings(dir, "auto", "f32", Some(Path::new("/lib/ort.so")));
        assert_eq!(exact.speech, SpeechDtype::F32);
        assert_eq!(exact.onnxruntime.as_deref(), Some(Path::new("/lib/ort.so")));
        assert_eq!(Runtime::with_settings(dir, "auto", "q8", None).speech, SpeechDtype::Q8);
        let asked = Runtime::with_settings(dir, "bf16", "bf16", None);
        let bf16 = if bf16_supported() { Precision::Bf16 } else { Precision::F32 };
        assert_eq!(asked.dense, bf16);
        assert_eq!(asked.speech, if bf16_supported() { SpeechDtype::Bf16 } else { SpeechDtype::Q8 });
        assert_eq!(Runtime::new(dir), Runtime::with_settings(dir, "auto", "auto", None));
        // The configuration's values reach the runtime.
        let mut c = mnema_core::Config::at(Path::new("/h"), dir);
        c.dense = "f32".into();
        c.speech_dtype = "f32".into();
        c.onnxruntime = Some("/x/libonnxruntime.so".into());
        let rt = Runtime::from_config(&c);
        assert_eq!((rt.dense, rt.speech, rt.models_dir.as_path()), (Precision::F32, SpeechDtype::F32, dir));
        assert_eq!(rt.onnxruntime, c.onnxruntime);
    }
}
